// SPDX-License-Identifier: Apache-2.0 OR MIT
/*
 * Registers revocable MRs over private anonymous memory while a second
 * thread invalidates a page of the range with MADV_DONTNEED, and counts
 * how each ibv_reg_mr() ended. revocable-reg-race.py builds and runs it.
 *
 *   revocable-reg-race IBDEV once|loop ITERATIONS SIZE
 *
 * once: one MADV_DONTNEED per registration, at a random point within
 *       twice the time a registration takes without interference
 *       (measured first); the registration retries and succeeds, or the
 *       MADV_DONTNEED came after it and revoked the new MR.
 * loop: MADV_DONTNEED in a loop, pausing about twice that time, for the
 *       whole run.
 *
 * Prints one JSON line: iterations, ok, eagain, other (failures with any
 * other errno), other_errno (the last of those), reg_us (the registration
 * time measured first), invalidations, max_reg_us (the slowest call).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ACCESS (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | \
		IBV_ACCESS_REMOTE_READ)

static char *buf;
static size_t size;
static long page;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned long gen, done_gen;	/* registrations started, invalidated */
static uint64_t fire_at;		/* once: when to invalidate (ns) */
static int stop;
static uint64_t pause_ns;		/* loop: between two invalidations */
static unsigned long invalidations;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = t / 1000000000ull,
			       .tv_nsec = t % 1000000000ull };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
	       EINTR)
		;
}

static void invalidate(unsigned int *seed)
{
	size_t off = (size_t)(rand_r(seed) % (size / page)) * page;

	if (madvise(buf + off, page, MADV_DONTNEED))
		perror("madvise");
	__atomic_add_fetch(&invalidations, 1, __ATOMIC_RELAXED);
}

/* once: wait for each registration, invalidate once at fire_at */
static void *once_thread(void *arg)
{
	unsigned int seed = 2;
	unsigned long seen = 0;

	(void)arg;
	for (;;) {
		uint64_t t;

		pthread_mutex_lock(&lock);
		while (gen == seen && !stop)
			pthread_cond_wait(&cond, &lock);
		if (stop) {
			pthread_mutex_unlock(&lock);
			return NULL;
		}
		seen = gen;
		t = fire_at;
		pthread_mutex_unlock(&lock);
		sleep_until(t);
		invalidate(&seed);
		pthread_mutex_lock(&lock);
		done_gen = seen;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
	}
}

static void *loop_thread(void *arg)
{
	unsigned int seed = 3;

	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		invalidate(&seed);
		sleep_until(now_ns() + pause_ns);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	unsigned long iterations, ok = 0, eagain = 0, other = 0, i;
	uint64_t calib[16], reg_ns, max_ns = 0;
	struct ibv_device **list;
	struct ibv_context *ctx = NULL;
	unsigned int seed = 1;
	int other_errno = 0, once, n;
	struct ibv_pd *pd;
	pthread_t th;

	if (argc != 5 || (strcmp(argv[2], "once") && strcmp(argv[2], "loop"))) {
		fprintf(stderr, "usage: %s IBDEV once|loop ITERATIONS SIZE\n",
			argv[0]);
		return 2;
	}
	once = !strcmp(argv[2], "once");
	iterations = strtoul(argv[3], NULL, 0);
	size = strtoul(argv[4], NULL, 0);
	page = sysconf(_SC_PAGESIZE);
	setenv("ODPRNIC_MR_MODE", "revocable", 1);

	list = ibv_get_device_list(&n);
	for (i = 0; list && i < (unsigned long)n; i++)
		if (!strcmp(ibv_get_device_name(list[i]), argv[1]))
			ctx = ibv_open_device(list[i]);
	if (!ctx) {
		fprintf(stderr, "cannot open %s\n", argv[1]);
		return 1;
	}
	pd = ibv_alloc_pd(ctx);
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!pd || buf == MAP_FAILED) {
		perror("ibv_alloc_pd/mmap");
		return 1;
	}
	memset(buf, 0x5a, size);

	/* what a registration costs when nothing interferes */
	for (i = 0; i < 16; i++) {
		uint64_t t = now_ns();
		struct ibv_mr *mr = ibv_reg_mr(pd, buf, size, ACCESS);

		calib[i] = now_ns() - t;
		if (!mr) {
			fprintf(stderr, "ibv_reg_mr without interference: %s\n",
				strerror(errno));
			return 1;
		}
		ibv_dereg_mr(mr);
	}
	qsort(calib, 16, sizeof(calib[0]), cmp_u64);
	reg_ns = calib[8];
	pause_ns = 2 * reg_ns;

	pthread_create(&th, NULL, once ? once_thread : loop_thread, NULL);
	for (i = 0; i < iterations; i++) {
		struct ibv_mr *mr;
		uint64_t t;

		t = now_ns();
		if (once) {
			pthread_mutex_lock(&lock);
			fire_at = t + (uint64_t)rand_r(&seed) % (2 * reg_ns);
			gen++;
			pthread_cond_broadcast(&cond);
			pthread_mutex_unlock(&lock);
		}
		mr = ibv_reg_mr(pd, buf, size, ACCESS);
		t = now_ns() - t;
		if (t > max_ns)
			max_ns = t;
		if (mr) {
			ok++;
		} else if (errno == EAGAIN) {
			eagain++;
		} else {
			other++;
			other_errno = errno;
		}
		if (once) {
			/* this registration's invalidation, before the next */
			pthread_mutex_lock(&lock);
			while (done_gen != gen)
				pthread_cond_wait(&cond, &lock);
			pthread_mutex_unlock(&lock);
		}
		if (mr)
			ibv_dereg_mr(mr);
	}
	pthread_mutex_lock(&lock);
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(th, NULL);

	printf("{\"iterations\": %lu, \"ok\": %lu, \"eagain\": %lu, "
	       "\"other\": %lu, \"other_errno\": %d, \"reg_us\": %llu, "
	       "\"invalidations\": %lu, \"max_reg_us\": %llu}\n",
	       iterations, ok, eagain, other, other_errno,
	       (unsigned long long)(reg_ns / 1000), invalidations,
	       (unsigned long long)(max_ns / 1000));
	ibv_dealloc_pd(pd);
	ibv_close_device(ctx);
	ibv_free_device_list(list);
	return 0;
}
