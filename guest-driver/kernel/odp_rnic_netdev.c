// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the port's Ethernet netdev.
 *
 * The device has no Ethernet datapath yet: the netdev exists so that the
 * RDMA core derives the RoCE GIDs from its IP addresses and RDMA CM can
 * resolve them. Frames sent to it are dropped and counted, except ARP
 * requests for the wire injector's IPv4 address (its GID ::ffff:192.0.2.1,
 * "Ports and the wire"): the netdev answers them, so that the kernel can
 * resolve the injector's L2 address when a QP is connected to it and
 * guest QPs reach the injector like any remote peer.
 */
#include <linux/etherdevice.h>
#include <linux/if_arp.h>
#include <linux/netdevice.h>
#include <net/arp.h>

#include "odp_rnic.h"

/* locally administered; the device routes by QPN and ignores it */
static const u8 odprnic_injector_mac[ETH_ALEN] = {
	0x02, 0x00, 0xc0, 0x00, 0x02, 0x01
};

/* the injector's IPv4 address: the last 4 bytes of its IPv4-mapped GID */
static __be32 odprnic_injector_ip(void)
{
	return cpu_to_be32(lower_32_bits(ODPRNIC_INJECTOR_GID_IID));
}

/* Answer @skb if it is an ARP request for the injector; true if it was. */
static bool odprnic_injector_arp(struct net_device *ndev, struct sk_buff *skb)
{
	struct {
		u8 sha[ETH_ALEN];
		__be32 sip;
		u8 tha[ETH_ALEN];
		__be32 tip;
	} __packed body;
	const struct arphdr *arp;
	struct sk_buff *reply;

	if (skb->protocol != htons(ETH_P_ARP) ||
	    !pskb_may_pull(skb, ETH_HLEN + sizeof(*arp) + sizeof(body)))
		return false;
	arp = (const struct arphdr *)(skb->data + ETH_HLEN);
	if (arp->ar_op != htons(ARPOP_REQUEST) ||
	    arp->ar_hrd != htons(ARPHRD_ETHER) ||
	    arp->ar_pro != htons(ETH_P_IP) || arp->ar_hln != ETH_ALEN ||
	    arp->ar_pln != 4)
		return false;
	memcpy(&body, arp + 1, sizeof(body));
	if (body.tip != odprnic_injector_ip())
		return false;
	reply = arp_create(ARPOP_REPLY, ETH_P_ARP, body.sip, ndev, body.tip,
			   body.sha, odprnic_injector_mac, body.sha);
	if (!reply)
		return false;
	reply->protocol = eth_type_trans(reply, ndev);
	netif_rx(reply);
	return true;
}

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
	if (odprnic_injector_arp(ndev, skb)) {
		ndev->stats.tx_packets++;
		ndev->stats.tx_bytes += skb->len;
		dev_consume_skb_any(skb);
		return NETDEV_TX_OK;
	}
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
