// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the port's Ethernet netdev.
 *
 * The v1.0 device has no Ethernet datapath: the netdev exists so that the
 * RDMA core derives the RoCE GIDs from its IP addresses and RDMA CM can
 * resolve them. Frames sent to it are dropped and counted.
 */
#include <linux/etherdevice.h>
#include <linux/netdevice.h>

#include "odp_rnic.h"

static int odprnic_ndo_open(struct net_device *ndev)
{
	netif_carrier_on(ndev);
	netif_start_queue(ndev);
	return 0;
}

static int odprnic_ndo_stop(struct net_device *ndev)
{
	netif_stop_queue(ndev);
	netif_carrier_off(ndev);
	return 0;
}

static netdev_tx_t odprnic_ndo_xmit(struct sk_buff *skb,
				    struct net_device *ndev)
{
	ndev->stats.tx_dropped++;
	dev_kfree_skb_any(skb);
	return NETDEV_TX_OK;
}

static const struct net_device_ops odprnic_netdev_ops = {
	.ndo_open = odprnic_ndo_open,
	.ndo_stop = odprnic_ndo_stop,
	.ndo_start_xmit = odprnic_ndo_xmit,
	.ndo_validate_addr = eth_validate_addr,
};

int odprnic_netdev_init(struct odprnic_dev *dev)
{
	struct net_device *ndev;
	int err;

	ndev = alloc_etherdev(0);
	if (!ndev)
		return -ENOMEM;
	SET_NETDEV_DEV(ndev, &dev->pdev->dev);
	ndev->netdev_ops = &odprnic_netdev_ops;
	if (is_valid_ether_addr(dev->mac))
		eth_hw_addr_set(ndev, dev->mac);
	else
		eth_hw_addr_random(ndev);
	err = register_netdev(ndev);
	if (err) {
		free_netdev(ndev);
		return err;
	}
	/* the emulated link is always up; ndo_stop takes the carrier down */
	netif_carrier_on(ndev);
	dev->netdev = ndev;
	return 0;
}

void odprnic_netdev_cleanup(struct odprnic_dev *dev)
{
	if (!dev->netdev)
		return;
	unregister_netdev(dev->netdev);
	free_netdev(dev->netdev);
	dev->netdev = NULL;
}
