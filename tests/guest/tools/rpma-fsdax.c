// SPDX-License-Identifier: Apache-2.0 OR MIT
/*
 * rpma-fsdax: librpma's write-to-persistent flow against a file on FS-DAX,
 * as a server and a client over RDMA CM (tests/guest/tools/librpma.sh).
 *
 *   rpma-fsdax server ADDR PORT FILE
 *	maps FILE (MAP_SYNC where the file system is DAX), registers it with
 *	rpma_mr_reg() for remote writes and visibility flushes, hands its
 *	descriptor to the client in the connection's private data and waits
 *	until the client disconnects. On FS-DAX librpma's plain ibv_reg_mr()
 *	is refused (FOLL_LONGTERM) and librpma retries with
 *	IBV_ACCESS_ON_DEMAND when the device offers ODP, or fails with its
 *	"Peer does not support On-Demand Paging" message when it does not.
 *   rpma-fsdax client ADDR PORT OFFSET SRCFILE
 *	connects, rpma_write()s the bytes of SRCFILE to OFFSET of the
 *	server's file and rpma_flush()es them (RPMA_FLUSH_TYPE_VISIBILITY: an
 *	RDMA READ after the write), then disconnects.
 *
 * Exit status 0 on success; 2 when the registration failed; 1 otherwise.
 * librpma's own messages go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <librpma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

static int fail(const char *what, int ret)
{
	fprintf(stderr, "rpma-fsdax: %s: %s\n", what, rpma_err_2str(ret));
	return 1;
}

static struct rpma_peer *peer_for(const char *addr, enum rpma_util_ibv_context_type type)
{
	struct ibv_context *ctx;
	struct rpma_peer *peer;
	int ret;

	ret = rpma_utils_get_ibv_context(addr, type, &ctx);
	if (ret) {
		fail("rpma_utils_get_ibv_context", ret);
		return NULL;
	}
	ret = rpma_peer_new(ctx, &peer);
	if (ret) {
		fail("rpma_peer_new", ret);
		return NULL;
	}
	return peer;
}

static int wait_event(struct rpma_conn *conn, enum rpma_conn_event want)
{
	enum rpma_conn_event ev;
	int ret = rpma_conn_next_event(conn, &ev);

	if (ret)
		return fail("rpma_conn_next_event", ret);
	if (ev != want) {
		fprintf(stderr, "rpma-fsdax: connection event %s, expected %s\n",
			rpma_utils_conn_event_2str(ev), rpma_utils_conn_event_2str(want));
		return 1;
	}
	return 0;
}

static int server(const char *addr, const char *port, const char *path)
{
	struct rpma_conn_private_data pdata;
	struct rpma_mr_local *mr;
	struct rpma_conn_req *req;
	struct rpma_conn *conn;
	struct rpma_peer *peer;
	struct rpma_ep *ep;
	char desc[64];
	size_t desc_size;
	struct stat st;
	void *mem;
	int fd, ret;

	fd = open(path, O_RDWR);
	if (fd < 0 || fstat(fd, &st)) {
		perror(path);
		return 1;
	}
	mem = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC,
		   fd, 0);
	if (mem == MAP_FAILED && errno == EOPNOTSUPP)
		mem = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	peer = peer_for(addr, RPMA_UTIL_IBV_CONTEXT_LOCAL);
	if (!peer)
		return 1;
	ret = rpma_mr_reg(peer, mem, st.st_size,
			  RPMA_MR_USAGE_WRITE_DST | RPMA_MR_USAGE_READ_SRC |
			  RPMA_MR_USAGE_FLUSH_TYPE_VISIBILITY, &mr);
	if (ret) {
		fail("rpma_mr_reg of the FS-DAX mapping", ret);
		return 2;
	}
	printf("registered %s (%lld bytes)\n", path, (long long)st.st_size);
	ret = rpma_mr_get_descriptor_size(mr, &desc_size);
	if (ret || desc_size > sizeof(desc) || rpma_mr_get_descriptor(mr, desc))
		return fail("rpma_mr_get_descriptor", ret);
	pdata.ptr = desc;
	pdata.len = desc_size;
	ret = rpma_ep_listen(peer, addr, port, &ep);
	if (ret)
		return fail("rpma_ep_listen", ret);
	printf("listening on %s:%s\n", addr, port);
	fflush(stdout);
	ret = rpma_ep_next_conn_req(ep, NULL, &req);
	if (ret)
		return fail("rpma_ep_next_conn_req", ret);
	ret = rpma_conn_req_connect(&req, &pdata, &conn);
	if (ret)
		return fail("rpma_conn_req_connect", ret);
	if (wait_event(conn, RPMA_CONN_ESTABLISHED) || wait_event(conn, RPMA_CONN_CLOSED))
		return 1;
	rpma_conn_disconnect(conn);
	rpma_conn_delete(&conn);
	rpma_ep_shutdown(&ep);
	rpma_mr_dereg(&mr);
	rpma_peer_delete(&peer);
	printf("client disconnected\n");
	return 0;
}

static int client(const char *addr, const char *port, size_t offset, const char *src)
{
	struct rpma_conn_private_data pdata;
	struct rpma_mr_remote *remote;
	struct rpma_mr_local *mr;
	struct rpma_conn_req *req;
	struct rpma_conn *conn;
	struct rpma_peer *peer;
	struct rpma_cq *cq;
	struct ibv_wc wc;
	struct stat st;
	void *buf;
	int fd, ret;

	fd = open(src, O_RDONLY);
	if (fd < 0 || fstat(fd, &st) || !st.st_size) {
		perror(src);
		return 1;
	}
	buf = aligned_alloc(4096, (st.st_size + 4095) & ~4095UL);
	if (!buf || read(fd, buf, st.st_size) != st.st_size) {
		perror("read");
		return 1;
	}
	peer = peer_for(addr, RPMA_UTIL_IBV_CONTEXT_REMOTE);
	if (!peer)
		return 1;
	ret = rpma_mr_reg(peer, buf, st.st_size, RPMA_MR_USAGE_WRITE_SRC, &mr);
	if (ret) {
		fail("rpma_mr_reg of the source buffer", ret);
		return 2;
	}
	ret = rpma_conn_req_new(peer, addr, port, NULL, &req);
	if (ret)
		return fail("rpma_conn_req_new", ret);
	ret = rpma_conn_req_connect(&req, NULL, &conn);
	if (ret)
		return fail("rpma_conn_req_connect", ret);
	if (wait_event(conn, RPMA_CONN_ESTABLISHED))
		return 1;
	ret = rpma_conn_get_private_data(conn, &pdata);
	if (ret || !pdata.ptr)
		return fail("rpma_conn_get_private_data", ret);
	ret = rpma_mr_remote_from_descriptor(pdata.ptr, pdata.len, &remote);
	if (ret)
		return fail("rpma_mr_remote_from_descriptor", ret);
	ret = rpma_write(conn, remote, offset, mr, 0, st.st_size, RPMA_F_COMPLETION_ON_ERROR, NULL);
	if (ret)
		return fail("rpma_write", ret);
	ret = rpma_flush(conn, remote, offset, st.st_size, RPMA_FLUSH_TYPE_VISIBILITY,
			 RPMA_F_COMPLETION_ALWAYS, NULL);
	if (ret)
		return fail("rpma_flush", ret);
	ret = rpma_conn_get_cq(conn, &cq);
	if (ret)
		return fail("rpma_conn_get_cq", ret);
	ret = rpma_cq_wait(cq);
	if (ret)
		return fail("rpma_cq_wait", ret);
	ret = rpma_cq_get_wc(cq, 1, &wc, NULL);
	if (ret)
		return fail("rpma_cq_get_wc", ret);
	if (wc.status != IBV_WC_SUCCESS) {
		fprintf(stderr, "rpma-fsdax: completion %s\n", ibv_wc_status_str(wc.status));
		return 1;
	}
	printf("wrote and flushed %lld bytes at offset %zu\n", (long long)st.st_size, offset);
	rpma_conn_disconnect(conn);
	wait_event(conn, RPMA_CONN_CLOSED);
	rpma_conn_delete(&conn);
	rpma_mr_remote_delete(&remote);
	rpma_mr_dereg(&mr);
	rpma_peer_delete(&peer);
	return 0;
}

int main(int argc, char **argv)
{
	/* librpma's errors on stderr, next to ours */
	rpma_log_set_threshold(RPMA_LOG_THRESHOLD_AUX, RPMA_LOG_LEVEL_WARNING);
	if (argc == 5 && !strcmp(argv[1], "server"))
		return server(argv[2], argv[3], argv[4]);
	if (argc == 6 && !strcmp(argv[1], "client"))
		return client(argv[2], argv[3], strtoull(argv[4], NULL, 0), argv[5]);
	fprintf(stderr, "usage: rpma-fsdax server ADDR PORT FILE\n"
		"       rpma-fsdax client ADDR PORT OFFSET SRCFILE\n");
	return 1;
}
