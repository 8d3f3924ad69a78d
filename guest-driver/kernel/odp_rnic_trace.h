/* SPDX-License-Identifier: GPL-2.0 */
/*
 * odp_rnic tracepoints: page faults and their resumes, invalidations from
 * doorbell to acknowledgment, revocations, implicit ODP children made and
 * freed, timeouts, and recoveries. Everything else is dynamic debug.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM odp_rnic

#if !defined(ODP_RNIC_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define ODP_RNIC_TRACE_H

#include <linux/tracepoint.h>

TRACE_EVENT(odprnic_page_fault,
	    TP_PROTO(u32 token, u32 key, u32 qpn, u64 iova, u64 len,
		     bool write),
	    TP_ARGS(token, key, qpn, iova, len, write),
	    TP_STRUCT__entry(__field(u32, token)
			     __field(u32, key)
			     __field(u32, qpn)
			     __field(u64, iova)
			     __field(u64, len)
			     __field(bool, write)),
	    TP_fast_assign(__entry->token = token;
			   __entry->key = key;
			   __entry->qpn = qpn;
			   __entry->iova = iova;
			   __entry->len = len;
			   __entry->write = write;),
	    TP_printk("token=%u key=%#x iova=%#llx len=%#llx %s qpn=%#x",
		      __entry->token, __entry->key, __entry->iova,
		      __entry->len, __entry->write ? "write" : "read",
		      __entry->qpn)
);

TRACE_EVENT(odprnic_resume,
	    TP_PROTO(u32 token, u32 key, u32 status, int err),
	    TP_ARGS(token, key, status, err),
	    TP_STRUCT__entry(__field(u32, token)
			     __field(u32, key)
			     __field(u32, status)
			     __field(int, err)),
	    TP_fast_assign(__entry->token = token;
			   __entry->key = key;
			   __entry->status = status;
			   __entry->err = err;),
	    TP_printk("token=%u key=%#x status=%u resolve=%d",
		      __entry->token, __entry->key, __entry->status,
		      __entry->err)
);

TRACE_EVENT(odprnic_inv_start,
	    TP_PROTO(u32 key, u64 iova, u64 len, u32 seq),
	    TP_ARGS(key, iova, len, seq),
	    TP_STRUCT__entry(__field(u32, key)
			     __field(u64, iova)
			     __field(u64, len)
			     __field(u32, seq)),
	    TP_fast_assign(__entry->key = key;
			   __entry->iova = iova;
			   __entry->len = len;
			   __entry->seq = seq;),
	    TP_printk("key=%#x iova=%#llx len=%#llx seq=%u",
		      __entry->key, __entry->iova, __entry->len,
		      __entry->seq)
);

TRACE_EVENT(odprnic_inv_ack,
	    TP_PROTO(u32 key, u32 seq, u64 wait_ns, int err),
	    TP_ARGS(key, seq, wait_ns, err),
	    TP_STRUCT__entry(__field(u32, key)
			     __field(u32, seq)
			     __field(u64, wait_ns)
			     __field(int, err)),
	    TP_fast_assign(__entry->key = key;
			   __entry->seq = seq;
			   __entry->wait_ns = wait_ns;
			   __entry->err = err;),
	    TP_printk("key=%#x seq=%u wait_ns=%llu err=%d",
		      __entry->key, __entry->seq, __entry->wait_ns,
		      __entry->err)
);

TRACE_EVENT(odprnic_revoke,
	    TP_PROTO(u32 key, int event, unsigned long start,
		     unsigned long end),
	    TP_ARGS(key, event, start, end),
	    TP_STRUCT__entry(__field(u32, key)
			     __field(int, event)
			     __field(unsigned long, start)
			     __field(unsigned long, end)),
	    TP_fast_assign(__entry->key = key;
			   __entry->event = event;
			   __entry->start = start;
			   __entry->end = end;),
	    TP_printk("key=%#x mmu_event=%d range=%#lx-%#lx",
		      __entry->key, __entry->event, __entry->start,
		      __entry->end)
);

TRACE_EVENT(odprnic_imr_child,
	    TP_PROTO(u32 key, u64 start, u64 len, bool made),
	    TP_ARGS(key, start, len, made),
	    TP_STRUCT__entry(__field(u32, key)
			     __field(u64, start)
			     __field(u64, len)
			     __field(bool, made)),
	    TP_fast_assign(__entry->key = key;
			   __entry->start = start;
			   __entry->len = len;
			   __entry->made = made;),
	    TP_printk("key=%#x child %#llx-%#llx %s", __entry->key,
		      __entry->start, __entry->start + __entry->len,
		      __entry->made ? "made" : "freed")
);

TRACE_EVENT(odprnic_timeout,
	    TP_PROTO(const char *what, u32 id, unsigned int ms),
	    TP_ARGS(what, id, ms),
	    /*
	     * A fixed array rather than __string(): __assign_str() lost its
	     * second argument in 6.10, and the names here are short.
	     */
	    TP_STRUCT__entry(__array(char, what, 16)
			     __field(u32, id)
			     __field(unsigned int, ms)),
	    TP_fast_assign(strscpy(__entry->what, what, sizeof(__entry->what));
			   __entry->id = id;
			   __entry->ms = ms;),
	    TP_printk("%s id=%#x after %u ms", __entry->what, __entry->id,
		      __entry->ms)
);

TRACE_EVENT(odprnic_recovery,
	    TP_PROTO(const char *why, const char *stage, int err, s64 us),
	    TP_ARGS(why, stage, err, us),
	    TP_STRUCT__entry(__array(char, why, 64)
			     __array(char, stage, 16)
			     __field(int, err)
			     __field(s64, us)),
	    TP_fast_assign(strscpy(__entry->why, why, sizeof(__entry->why));
			   strscpy(__entry->stage, stage,
				   sizeof(__entry->stage));
			   __entry->err = err;
			   __entry->us = us;),
	    TP_printk("%s after %lld us (err %d): %s", __entry->stage,
		      __entry->us, __entry->err, __entry->why)
);

#endif /* ODP_RNIC_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE odp_rnic_trace
#include <trace/define_trace.h>
