// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: module, PCI probe/remove, BAR 0, MSI-X, enable/reset.
 *
 * The device is described by docs/hardware.md (contract v1.0); section
 * names in comments refer to it.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "odp_rnic.h"

#define CREATE_TRACE_POINTS
#include "odp_rnic_trace.h"

unsigned int odprnic_cmd_timeout_ms = 5000;
module_param_named(cmd_timeout_ms, odprnic_cmd_timeout_ms, uint, 0644);
MODULE_PARM_DESC(cmd_timeout_ms,
		 "Bound on every wait for a command completion (ms)");

unsigned int odprnic_inv_timeout_ms = 5000;
module_param_named(inv_timeout_ms, odprnic_inv_timeout_ms, uint, 0644);
MODULE_PARM_DESC(inv_timeout_ms,
		 "Bound on the wait for an invalidation acknowledgment (ms); on expiry the MR dies and the device is fenced");

char *odprnic_default_mr_mode = "pinned";
module_param_named(default_mr_mode, odprnic_default_mr_mode, charp, 0444);
MODULE_PARM_DESC(default_mr_mode,
		 "Mode of non-ODP MRs that request none: pinned or revocable");

bool odprnic_recovery = true;
module_param_named(recovery, odprnic_recovery, bool, 0644);
MODULE_PARM_DESC(recovery,
		 "After a fence, a device error or a command timeout, reset the device and register a new ib_device (0: stay down until the driver is reloaded)");

static unsigned int odprnic_recovery_burst = 5;
module_param_named(recovery_burst, odprnic_recovery_burst, uint, 0644);
MODULE_PARM_DESC(recovery_burst,
		 "Recoveries allowed within a minute; a device that needs more is left down until the driver is reloaded (fault campaigns raise it)");

unsigned int odprnic_health_ms = 1000;
module_param_named(health_ms, odprnic_health_ms, uint, 0644);
MODULE_PARM_DESC(health_ms,
		 "Period of the device health check (ms): a device that vanished, stopped with STATUS_FATAL or reset itself is recovered even when no command notices (0: off)");

bool odprnic_two_pass = true;
module_param_named(two_pass, odprnic_two_pass, bool, 0644);
MODULE_PARM_DESC(two_pass,
		 "On kernels with two-pass mmu interval notifiers (7.2+), ring every doorbell of an invalidation before waiting for the acknowledgments");

#define ODPRNIC_READY_TIMEOUT_MS	1000

/* a device that needs more than recovery_burst recoveries a window is left down */
#define ODPRNIC_RECOVERY_WINDOW		(60 * HZ)
/* attempts to restart the device in one recovery, with growing pauses */
#define ODPRNIC_RESTART_TRIES		3

u32 odprnic_read32(struct odprnic_dev *dev, u32 reg)
{
	return ioread32(dev->regs + reg);
}

void odprnic_write32(struct odprnic_dev *dev, u32 reg, u32 val)
{
	iowrite32(val, dev->regs + reg);
}

/* "Registers": a 64-bit register is latched by the write of its high half. */
void odprnic_write64(struct odprnic_dev *dev, u32 reg, u64 val)
{
	iowrite32(lower_32_bits(val), dev->regs + reg);
	iowrite32(upper_32_bits(val), dev->regs + reg + 4);
}

/*
 * A device that was unplugged (or whose process died) reads all-ones.
 * Every path that waits on the device checks this before it waits longer.
 */
bool odprnic_dev_dead(struct odprnic_dev *dev)
{
	if (READ_ONCE(dev->lost) || READ_ONCE(dev->fenced))
		return true;
	if (odprnic_read32(dev, ODPRNIC_REG_MAGIC) == 0xffffffff) {
		if (!xchg(&dev->lost, true)) {
			dev_err(&dev->pdev->dev,
				"device lost (registers read all-ones)\n");
			odprnic_cmdq_abort(dev);
			odprnic_schedule_recovery(dev, "the device was lost");
		}
		return true;
	}
	return false;
}

/*
 * "Fencing": clearing Bus Master Enable stops all DMA before the config
 * write completes. The last resort when the device did not confirm that it
 * stopped touching memory the kernel takes back.
 */
static void __odprnic_fence(struct odprnic_dev *dev, const char *why)
{
	bool first;

	/*
	 * Every fencer returns only once bus mastering is off: a second one
	 * (an invalidation timeout racing recovery) about to unmap or unpin
	 * waits here for the first's config write. Every caller may sleep.
	 */
	mutex_lock(&dev->fence_lock);
	first = !dev->fenced;
	if (first) {
		/* a device that is gone does no DMA and answers no config write */
		if (!READ_ONCE(dev->lost))
			pci_clear_master(dev->pdev);
		WRITE_ONCE(dev->fenced, true);
	}
	mutex_unlock(&dev->fence_lock);
	if (!first)
		return;
	odprnic_cmdq_abort(dev);
	dev_err(&dev->pdev->dev,
		"fenced: bus mastering cleared because %s; the device does no DMA until %s\n",
		why, READ_ONCE(odprnic_recovery) ? "it is reset" :
		"the driver is reloaded");
}

/*
 * Page faults that began before this issue no more commands: the device is
 * about to be reset (or removed), and the accesses they would resume go
 * with it. A fault issuing commands now holds fault_gate for read, and its
 * commands end at once on a fenced or lost device.
 */
void odprnic_faults_cut_off(struct odprnic_dev *dev)
{
	down_write(&dev->fault_gate);
	WRITE_ONCE(dev->fault_gen, dev->fault_gen + 1);
	up_write(&dev->fault_gate);
}

void odprnic_fence(struct odprnic_dev *dev, const char *why)
{
	__odprnic_fence(dev, why);
	odprnic_schedule_recovery(dev, why);
}

/*
 * odprnic_schedule_recovery - the device can no longer be trusted (@why):
 * have the recovery work fence it, take the ib_device down and bring a
 * new one up on the reset device. Callable from any context, including
 * MMU notifiers and the event work; the first reason wins.
 */
void odprnic_schedule_recovery(struct odprnic_dev *dev, const char *why)
{
	unsigned long flags;

	bool queue = false;

	if (READ_ONCE(dev->removing))
		return;
	spin_lock_irqsave(&dev->recovery_why_lock, flags);
	/* a recovery under way handles what goes wrong while it runs */
	if (!dev->recovering && !dev->recovery_why[0]) {
		strscpy(dev->recovery_why, why, sizeof(dev->recovery_why));
		queue = true;
	}
	spin_unlock_irqrestore(&dev->recovery_why_lock, flags);
	/* not dev->wq: unregistering flushes it (unpin work, event work) */
	if (queue)
		queue_work(system_long_wq, &dev->recovery_work);
}

/*
 * The health check: what no command or event may tell. An application
 * that only polls its CQs from user space issues no command, and a
 * device that stops with FATAL_EVENT_OVERFLOW or FATAL_RING posts no
 * event; a device that reset itself forgot its queues and says nothing.
 */
static void odprnic_health_work(struct work_struct *work)
{
	struct odprnic_dev *dev = container_of(to_delayed_work(work),
					       struct odprnic_dev, health_work);
	unsigned int period = READ_ONCE(odprnic_health_ms);
	u32 st;

	if (period && !odprnic_dev_gone(dev) && !READ_ONCE(dev->recovering)) {
		st = odprnic_read32(dev, ODPRNIC_REG_STATUS);
		if (st == 0xffffffff) {
			odprnic_dev_dead(dev);
		} else if (st & ODPRNIC_STATUS_FATAL) {
			dev_err(&dev->pdev->dev, "health: device fatal, code %u\n",
				odprnic_read32(dev, ODPRNIC_REG_FATAL_CODE));
			odprnic_schedule_recovery(dev, "the device stopped (STATUS_FATAL)");
		} else if (!(st & ODPRNIC_STATUS_READY)) {
			dev_err(&dev->pdev->dev, "health: device no longer ready (status %#x)\n",
				st);
			odprnic_schedule_recovery(dev, "the device reset itself");
		}
	}
	if (!READ_ONCE(dev->removing))
		queue_delayed_work(system_long_wq, &dev->health_work,
				   msecs_to_jiffies(period ?: 1000));
}

static int odprnic_wait_status(struct odprnic_dev *dev, u32 mask, u32 want)
{
	unsigned long deadline = jiffies +
				 msecs_to_jiffies(ODPRNIC_READY_TIMEOUT_MS);
	u32 st;

	for (;;) {
		st = odprnic_read32(dev, ODPRNIC_REG_STATUS);
		if (st == 0xffffffff)
			return -ENODEV;
		if ((st & mask) == want)
			return 0;
		if (st & ODPRNIC_STATUS_FATAL) {
			dev_err(&dev->pdev->dev, "device fatal, code %u\n",
				odprnic_read32(dev, ODPRNIC_REG_FATAL_CODE));
			return -EIO;
		}
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;
		usleep_range(100, 1000);
	}
}

/* "Reset": stop DMA, forget queues and objects, clear READY and INV_ACK. */
static int odprnic_reset(struct odprnic_dev *dev)
{
	odprnic_write32(dev, ODPRNIC_REG_CONTROL, ODPRNIC_CONTROL_RESET);
	dev->inv_seq = 0;
	return odprnic_wait_status(dev, ODPRNIC_STATUS_READY |
				   ODPRNIC_STATUS_FATAL, 0);
}

static void odprnic_vq_regs(struct odprnic_dev *dev, struct odprnic_vq *vq,
			    u32 base)
{
	dma_addr_t d = vq->mem_dma;

	odprnic_write64(dev, base + 0x0,
			d + ((void *)vq->vr.desc - vq->mem));
	odprnic_write64(dev, base + 0x8,
			d + ((void *)vq->vr.avail - vq->mem));
	odprnic_write64(dev, base + 0x10,
			d + ((void *)vq->vr.used - vq->mem));
	odprnic_write32(dev, base + 0x18, vq->num);
}

static int odprnic_enable(struct odprnic_dev *dev)
{
	int err;

	/* "Reset" cleared the queue registers and the used rings' indices */
	odprnic_cmdq_restart(dev);
	odprnic_eq_restart(dev);

	odprnic_vq_regs(dev, &dev->cmdq.vq, ODPRNIC_REG_CMDQ_DESC);
	odprnic_vq_regs(dev, &dev->eq.vq, ODPRNIC_REG_EQ_DESC);
	odprnic_write32(dev, ODPRNIC_REG_CONTROL, ODPRNIC_CONTROL_ENABLE);
	err = odprnic_wait_status(dev, ODPRNIC_STATUS_READY,
				  ODPRNIC_STATUS_READY);
	if (err)
		return err;
	/* the event buffers were put on the avail ring by odprnic_eq_restart() */
	odprnic_write32(dev, ODPRNIC_REG_EQ_NOTIFY, 1);
	return 0;
}

static int odprnic_check_device(struct odprnic_dev *dev)
{
	struct device *d = &dev->pdev->dev;
	u32 magic = odprnic_read32(dev, ODPRNIC_REG_MAGIC);
	u32 lo, hi;

	if (magic != ODPRNIC_MAGIC) {
		dev_err(d, "bad magic %#x\n", magic);
		return -ENODEV;
	}
	dev->version = odprnic_read32(dev, ODPRNIC_REG_VERSION);
	if ((dev->version >> 16) != ODPRNIC_VERSION_MAJOR) {
		dev_err(d, "interface version %u.%u, driver knows %u.x\n",
			dev->version >> 16, dev->version & 0xffff,
			ODPRNIC_VERSION_MAJOR);
		return -ENODEV;
	}
	dev->caps = odprnic_read32(dev, ODPRNIC_REG_CAPS);
	dev->max_pd = odprnic_read32(dev, ODPRNIC_REG_MAX_PD);
	dev->max_mr = odprnic_read32(dev, ODPRNIC_REG_MAX_MR);
	dev->max_mr_pages = odprnic_read32(dev, ODPRNIC_REG_MAX_MR_PAGES);
	lo = odprnic_read32(dev, ODPRNIC_REG_MAC_LO);
	hi = odprnic_read32(dev, ODPRNIC_REG_MAC_HI);
	dev->mac[0] = lo;
	dev->mac[1] = lo >> 8;
	dev->mac[2] = lo >> 16;
	dev->mac[3] = lo >> 24;
	dev->mac[4] = hi;
	dev->mac[5] = hi >> 8;
	dev->max_cq = odprnic_read32(dev, ODPRNIC_REG_MAX_CQ);
	dev->max_qp = odprnic_read32(dev, ODPRNIC_REG_MAX_QP);
	dev_info(d, "interface %u.%u caps %#x max_pd %u max_mr %u mac %pM\n",
		 dev->version >> 16, dev->version & 0xffff, dev->caps,
		 dev->max_pd, dev->max_mr, dev->mac);
	return 0;
}

static int odprnic_setup_irqs(struct odprnic_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;
	int n, err;

	n = pci_alloc_irq_vectors(pdev, ODPRNIC_VEC_EVENT + 1,
				  ODPRNIC_NUM_VECTORS, PCI_IRQ_MSIX);
	if (n < 0) {
		dev_err(&pdev->dev, "MSI-X unavailable: %d\n", n);
		return n;
	}
	err = request_irq(pci_irq_vector(pdev, ODPRNIC_VEC_CMD),
			  odprnic_cmdq_irq, 0, "odp_rnic-cmd", dev);
	if (err)
		goto free_vectors;
	err = request_irq(pci_irq_vector(pdev, ODPRNIC_VEC_EVENT),
			  odprnic_eq_irq, 0, "odp_rnic-event", dev);
	if (err)
		goto free_cmd;
	odprnic_cq_vecs_init(dev, n);
	dev_info(&pdev->dev, "MSI-X enabled, %d vectors, %u for CQs\n", n,
		 dev->ncqvec);
	return 0;

free_cmd:
	free_irq(pci_irq_vector(pdev, ODPRNIC_VEC_CMD), dev);
free_vectors:
	pci_free_irq_vectors(pdev);
	return err;
}

static void odprnic_free_irqs(struct odprnic_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;

	odprnic_cq_vecs_cleanup(dev);
	free_irq(pci_irq_vector(pdev, ODPRNIC_VEC_EVENT), dev);
	free_irq(pci_irq_vector(pdev, ODPRNIC_VEC_CMD), dev);
	pci_free_irq_vectors(pdev);
}

/*
 * Interface 1.1 ("Completion queues, queue pairs and address handles"):
 * CQs and QPs only when the device says it serves them, with its doorbell
 * BAR and at least one CQ vector. Without them the device keeps the 1.0
 * behaviour: PDs and MRs, and CQ/QP creation refused with -EOPNOTSUPP.
 */
static void odprnic_datapath_init(struct odprnic_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;
	u32 minor = dev->version & 0xffff;

	if (minor < 1)
		return;
	if (pci_resource_len(pdev, ODPRNIC_BAR_DB) <
	    (resource_size_t)ODPRNIC_DB_PAGES * ODPRNIC_DB_PAGE_SIZE ||
	    !(pci_resource_flags(pdev, ODPRNIC_BAR_DB) & IORESOURCE_MEM)) {
		dev_warn(&pdev->dev, "no doorbell BAR: no data path\n");
		return;
	}
	if (!dev->ncqvec) {
		dev_warn(&pdev->dev, "no MSI-X vector for CQs: no data path\n");
		return;
	}
	dev->db = pci_iomap_range(pdev, ODPRNIC_BAR_DB, 0,
				  ODPRNIC_DB_PAGE_SIZE);
	if (!dev->db) {
		dev_warn(&pdev->dev, "cannot map the doorbell BAR\n");
		return;
	}
	dev->db_phys = pci_resource_start(pdev, ODPRNIC_BAR_DB);
	dev->datapath = true;
}

static void odprnic_datapath_cleanup(struct odprnic_dev *dev)
{
	if (dev->db)
		pci_iounmap(dev->pdev, dev->db);
	dev->db = NULL;
	dev->datapath = false;
}

/*
 * Bring the device from any state to serving commands: reset it (which
 * also clears STATUS_FATAL), give it the queues again, let it master the
 * bus, enable it and check it answers. Used by probe and by recovery.
 */
static int odprnic_start(struct odprnic_dev *dev)
{
	int err;

	err = odprnic_reset(dev);
	if (err)
		return err;
	mutex_lock(&dev->fence_lock);
	WRITE_ONCE(dev->fenced, false);
	pci_set_master(dev->pdev);
	mutex_unlock(&dev->fence_lock);
	err = odprnic_enable(dev);
	if (!err)
		err = odprnic_cmd_nop(dev);
	if (err) {
		/* stop whatever the device began before it failed */
		mutex_lock(&dev->fence_lock);
		pci_clear_master(dev->pdev);
		WRITE_ONCE(dev->fenced, true);
		mutex_unlock(&dev->fence_lock);
	}
	return err;
}

/* A recovery more than recovery_burst times a window: give up. */
static bool odprnic_recovery_allowed(struct odprnic_dev *dev)
{
	if (!dev->recent_recoveries ||
	    time_after(jiffies, dev->recovery_window + ODPRNIC_RECOVERY_WINDOW)) {
		dev->recovery_window = jiffies;
		dev->recent_recoveries = 0;
	}
	return ++dev->recent_recoveries <= READ_ONCE(odprnic_recovery_burst);
}

/*
 * Recovery ("Reset"). The ordering is what makes it safe:
 *
 * 1. Fence first (if nothing did yet): from here the device does no DMA,
 *    so every page and ring the teardown frees is safe to free, and every
 *    command fails at once instead of waiting cmd_timeout_ms.
 * 2. Tell the ib_device's users (IB_EVENT_DEVICE_FATAL), then unregister
 *    it: the core disassociates user contexts and destroys every object
 *    through the driver's destroy verbs, which treat a fenced device as
 *    having destroyed everything already.
 * 3. Flush the driver's workqueue (event, unpin and prefetch work), so no
 *    command is in flight when the queues restart.
 * 4. Reset and enable the device, a bounded number of times.
 * 5. Register a new ib_device.
 *
 * A device that is lost (reads all-ones, as after a surprise removal)
 * stops after step 3: its ib_device is gone, the PCI function stays bound
 * until remove(). recovery_lock orders all of this against remove().
 */
static void odprnic_recovery_work(struct work_struct *work)
{
	struct odprnic_dev *dev = container_of(work, struct odprnic_dev,
					       recovery_work);
	struct device *d = &dev->pdev->dev;
	char why[sizeof(dev->recovery_why)];
	unsigned long flags;
	ktime_t t0 = ktime_get();
	int err = -ENODEV, i;

	spin_lock_irqsave(&dev->recovery_why_lock, flags);
	strscpy(why, dev->recovery_why, sizeof(why));
	dev->recovery_why[0] = '\0';
	dev->recovering = true;
	spin_unlock_irqrestore(&dev->recovery_why_lock, flags);

	mutex_lock(&dev->recovery_lock);
	if (dev->removing)
		goto out;
	__odprnic_fence(dev, why);
	odprnic_faults_cut_off(dev);
	trace_odprnic_recovery(why, "start", 0, 0);

	if (dev->ibdev) {
		struct ib_event ev = {
			.device = dev->ibdev,
			.event = IB_EVENT_DEVICE_FATAL,
			.element.port_num = 1,
		};

		ib_dispatch_event(&ev);
		dev_warn(d, "recovery: %s; unregistering %s\n", why,
			 dev_name(&dev->ibdev->dev));
		odprnic_unregister_ibdev(dev);
	}
	flush_workqueue(dev->wq);
	trace_odprnic_recovery(why, "unregistered", 0,
			       ktime_us_delta(ktime_get(), t0));

	if (READ_ONCE(dev->lost)) {
		dev_err(d, "recovery: the device is gone; it stays down until it is removed\n");
		goto failed;
	}
	if (!READ_ONCE(odprnic_recovery)) {
		dev_err(d, "recovery disabled (recovery=0): the device stays down until the driver is reloaded\n");
		goto failed;
	}
	if (!odprnic_recovery_allowed(dev)) {
		dev_err(d, "recovery: more than %u recoveries within %u s; the device stays down until the driver is reloaded\n",
			READ_ONCE(odprnic_recovery_burst),
			ODPRNIC_RECOVERY_WINDOW / HZ);
		goto failed;
	}
	for (i = 0; i < ODPRNIC_RESTART_TRIES; i++) {
		if (i)
			msleep(100 << i);
		err = odprnic_start(dev);
		if (!err || READ_ONCE(dev->lost))
			break;
		dev_warn(d, "recovery: restart %d of %d failed: %d\n", i + 1,
			 ODPRNIC_RESTART_TRIES, err);
	}
	if (err)
		goto failed;
	/* what goes wrong from here on is a new reason to recover */
	spin_lock_irqsave(&dev->recovery_why_lock, flags);
	dev->recovering = false;
	spin_unlock_irqrestore(&dev->recovery_why_lock, flags);
	err = odprnic_register_ibdev(dev);
	if (err)
		goto failed;
	atomic64_inc(&dev->stats.recoveries);
	trace_odprnic_recovery(why, "recovered", 0,
			       ktime_us_delta(ktime_get(), t0));
	dev_warn(d, "recovered in %lld ms: %s is a new ib_device on the reset device\n",
		 ktime_ms_delta(ktime_get(), t0), dev_name(&dev->ibdev->dev));
	goto out;

failed:
	atomic64_inc(&dev->stats.recovery_failures);
	trace_odprnic_recovery(why, "failed", err,
			       ktime_us_delta(ktime_get(), t0));
out:
	mutex_unlock(&dev->recovery_lock);
}

static int odprnic_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct odprnic_dev *dev;
	int err;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->pdev = pdev;
	pci_set_drvdata(pdev, dev);
	spin_lock_init(&dev->inv_lock);
	mutex_init(&dev->fence_lock);
	init_waitqueue_head(&dev->inv_wait);
	xa_init_flags(&dev->mrs, XA_FLAGS_LOCK_IRQ);
	xa_init(&dev->cqs);
	xa_init(&dev->qps);
	ida_init(&dev->db_ida);
	INIT_WORK(&dev->recovery_work, odprnic_recovery_work);
	INIT_DELAYED_WORK(&dev->health_work, odprnic_health_work);
	mutex_init(&dev->recovery_lock);
	spin_lock_init(&dev->recovery_why_lock);

	err = pci_enable_device(pdev);
	if (err)
		goto err_free;
	err = pci_request_regions(pdev, ODPRNIC_DRV_NAME);
	if (err)
		goto err_disable;
	/*
	 * A full 64-bit mask: from 6.16 ib_umem_odp refuses devices with
	 * limited addressing (hmm_dma_map_alloc).
	 */
	err = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (err) {
		dev_err(&pdev->dev, "no 64-bit DMA: %d\n", err);
		goto err_regions;
	}
	dev->regs = pci_iomap(pdev, ODPRNIC_BAR_REGS, ODPRNIC_BAR_REGS_SIZE);
	if (!dev->regs) {
		err = -ENOMEM;
		goto err_regions;
	}
	err = odprnic_check_device(dev);
	if (err)
		goto err_unmap;

	dev->wq = alloc_workqueue("odp_rnic", WQ_HIGHPRI | WQ_UNBOUND |
				  WQ_MEM_RECLAIM, 0);
	if (!dev->wq) {
		err = -ENOMEM;
		goto err_unmap;
	}
	init_rwsem(&dev->fault_gate);
	dev->fault_wq = alloc_workqueue("odp_rnic_fault", WQ_UNBOUND |
					WQ_MEM_RECLAIM, 0);
	if (!dev->fault_wq) {
		err = -ENOMEM;
		goto err_wq;
	}
	err = odprnic_cmdq_init(dev);
	if (err)
		goto err_wq;
	err = odprnic_eq_init(dev);
	if (err)
		goto err_cmdq;
	err = odprnic_setup_irqs(dev);
	if (err)
		goto err_eq;
	err = odprnic_start(dev);
	if (err) {
		dev_err(&pdev->dev, "the device does not start: %d\n", err);
		goto err_irqs;
	}
	odprnic_datapath_init(dev);
	err = odprnic_netdev_init(dev);
	if (err)
		goto err_reset;
	mutex_lock(&dev->recovery_lock);
	err = odprnic_register_ibdev(dev);
	mutex_unlock(&dev->recovery_lock);
	if (err)
		goto err_netdev;
	queue_delayed_work(system_long_wq, &dev->health_work,
			   msecs_to_jiffies(odprnic_health_ms ?: 1000));
	return 0;

err_netdev:
	odprnic_netdev_cleanup(dev);
err_reset:
	odprnic_reset(dev);
	odprnic_datapath_cleanup(dev);
err_irqs:
	/* nothing the device does from here may start recovery */
	WRITE_ONCE(dev->removing, true);
	odprnic_free_irqs(dev);
	cancel_work_sync(&dev->recovery_work);
	pci_clear_master(pdev);
err_eq:
	odprnic_eq_cleanup(dev);
err_cmdq:
	odprnic_cmdq_cleanup(dev);
err_wq:
	if (dev->fault_wq)
		destroy_workqueue(dev->fault_wq);
	destroy_workqueue(dev->wq);
err_unmap:
	pci_iounmap(pdev, dev->regs);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_free:
	kfree(dev);
	return err;
}

static void odprnic_remove(struct pci_dev *pdev)
{
	struct odprnic_dev *dev = pci_get_drvdata(pdev);

	/*
	 * No recovery starts from here on; one under way finishes first (it
	 * holds recovery_lock) and may have left no ib_device behind.
	 */
	WRITE_ONCE(dev->removing, true);
	cancel_delayed_work_sync(&dev->health_work);
	cancel_work_sync(&dev->recovery_work);
	mutex_lock(&dev->recovery_lock);
	/* a device already gone makes every command below fail fast */
	odprnic_dev_dead(dev);
	odprnic_faults_cut_off(dev);
	odprnic_unregister_ibdev(dev);
	mutex_unlock(&dev->recovery_lock);
	/*
	 * Faults still running issue no command any more; one still waiting
	 * for a page holds the module, so only a removal of the PCI function
	 * itself (unplug, unbind) can wait here for it.
	 */
	destroy_workqueue(dev->fault_wq);
	odprnic_netdev_cleanup(dev);
	if (!READ_ONCE(dev->lost))
		odprnic_reset(dev);
	odprnic_datapath_cleanup(dev);
	odprnic_free_irqs(dev);
	flush_workqueue(dev->wq);
	destroy_workqueue(dev->wq);
	/* a command that timed out during the teardown may have queued one */
	cancel_work_sync(&dev->recovery_work);
	odprnic_eq_cleanup(dev);
	odprnic_cmdq_cleanup(dev);
	pci_clear_master(pdev);
	pci_iounmap(pdev, dev->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	WARN_ON(!xa_empty(&dev->mrs));
	xa_destroy(&dev->mrs);
	WARN_ON(!xa_empty(&dev->cqs) || !xa_empty(&dev->qps));
	xa_destroy(&dev->cqs);
	xa_destroy(&dev->qps);
	ida_destroy(&dev->db_ida);
	kfree(dev);
}

static const struct pci_device_id odprnic_pci_ids[] = {
	{ PCI_DEVICE(ODPRNIC_PCI_VENDOR_ID, ODPRNIC_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, odprnic_pci_ids);

static struct pci_driver odprnic_pci_driver = {
	.name = ODPRNIC_DRV_NAME,
	.id_table = odprnic_pci_ids,
	.probe = odprnic_probe,
	.remove = odprnic_remove,
};

module_pci_driver(odprnic_pci_driver);

MODULE_AUTHOR("odp-rnic developers");
MODULE_DESCRIPTION("odp-rnic emulated RDMA NIC with on-demand paging");
MODULE_LICENSE("GPL");
