/*
 * rdkperf: a small, cheap librdkafka load generator for benches/e2e/bench.py.
 *
 * Build:  gcc -O2 -o rdkperf rdkperf.c -lrdkafka -lpthread
 *
 * Modes (first argument):
 *   version   print {"librdkafka": "..."}
 *   metadata  fetch metadata for -t (or all topics); exit 0 if the broker answers
 *   produce   -n N records of -s S bytes to -t, every partition in turn (explicit
 *             round-robin, no keys), acks=all, idempotent; counts delivery
 *             reports; optional --rate R (records/s, paced in --slice-us slices)
 *             and --seconds T (with or without --rate: stop sending after T s).  Prints {records, bytes, seconds, errors, ...};
 *             seconds = first produce() to last delivery report.  Values
 *             (--payload): `same` (default) = one buffer of S rand() bytes
 *             reused by every record; `random` = each record its own slice of
 *             a 64 MiB pool of pseudo-random bytes (incompressible); `text` =
 *             the same from a pool of words (3-9 lowercase letters drawn from a
 *             1,024-word vocabulary, space-separated: log-like, compressible).
 *   consume   assign every partition of -t from the beginning (no group join),
 *             count records until -n reached or --idle-seconds without data.
 *             Payloads are neither copied nor printed.  Prints {records, bytes,
 *             seconds, ...}; seconds = assign to last record.
 *   latency   in one process: a producer thread paced at --rate R records/s
 *             (linger.ms=--linger-ms, acks=all, idempotent), each value starting
 *             with its CLOCK_MONOTONIC send time in ns (native byte order), a
 *             delivery-report thread, and a consumer thread reading the topic
 *             from --from end|beginning that computes now - send time.  After
 *             --warmup seconds, records sent during --seconds are measured;
 *             prints p50/p99/p999/max of produce->consume and produce->ack, in ms.
 *
 * Every mode has a hard bound (--max-seconds, enforced with alarm()), so a
 * stuck broker cannot keep it alive.  -X key=value passes any librdkafka
 * property to every client the mode creates (after the mode's defaults).
 * With --wait-go (produce/consume) it prints "READY" after connecting (and,
 * for produce, after acquiring its producer id) and waits for a line on stdin
 * before starting, so that several processes can be released together.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* user+system CPU seconds of this process so far (all threads, librdkafka's included) */
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void sleep_until_ns(int64_t t) {
    struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rdkperf: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* ------------------------------------------------------------------------ */
/* options                                                                  */

#define MAX_X 64
static struct {
    const char *mode, *brokers, *topic, *warmup_topic, *from, *payload;
    long long count;
    int size;
    double linger_ms, rate, seconds, warmup, drain, idle, max_seconds;
    long long batch_size;
    int slice_us, wait_go, fetch_wait_ms;
    const char *xk[MAX_X], *xv[MAX_X];
    int nx;
    const char *parts; /* comma list of partitions, NULL = all */
} o = {
    .brokers = "127.0.0.1:9092", .from = "end", .payload = "same", .count = 0, .size = 100, .linger_ms = -1,
    .rate = 0, .seconds = 0, .warmup = 2, .drain = 3, .idle = 3, .max_seconds = 120,
    .batch_size = 1000000, .slice_us = 1000, .fetch_wait_ms = -1,
};

static void usage(void) {
    fprintf(stderr,
            "usage: rdkperf version|metadata|produce|consume|latency -b BROKERS -t TOPIC [options]\n"
            "  -n N            records (produce: to send; consume: to read)\n"
            "  -s BYTES        record value size (default 100; latency: >= 8)\n"
            "  -X key=value    librdkafka property for every client (repeatable)\n"
            "  -p P1,P2,..     produce/consume: only these partitions (default all)\n"
            "  --linger-ms MS  producer linger.ms (produce default 10, latency default 1)\n"
            "  --batch-size B  producer batch.size (default 1000000)\n"
            "  --payload same|random|text  produce: record values (default same: one buffer for all)\n"
            "  --rate R        records/s (produce: optional pacing; latency: required)\n"
            "  --seconds T     produce: stop after T s; latency: measured window\n"
            "  --warmup W      latency: unmeasured paced seconds before the window (default 2)\n"
            "  --drain D       latency: seconds to wait for the window's records after it (default 3)\n"
            "  --from end|beginning  latency consumer start (default end)\n"
            "  --idle-seconds I     consume: give up after I s without records (default 3)\n"
            "  --fetch-wait-ms MS   consumer fetch.wait.max.ms (consume 100, latency 100)\n"
            "  --slice-us U    pacing slice (default 1000)\n"
            "  --warmup-topic T produce/latency: get the producer id with one record to T first\n"
            "  --wait-go       print READY, wait for a stdin line before starting\n"
            "  --max-seconds S hard bound on the whole process (default 120)\n");
    exit(2);
}

static void parse(int argc, char **argv) {
    enum { O_LINGER = 256, O_BATCH, O_RATE, O_SECONDS, O_WARMUP, O_DRAIN, O_FROM, O_IDLE, O_FWAIT,
           O_SLICE, O_WTOPIC, O_GO, O_MAX, O_PAYLOAD };
    static struct option lo[] = {
        {"linger-ms", 1, 0, O_LINGER}, {"batch-size", 1, 0, O_BATCH}, {"rate", 1, 0, O_RATE},
        {"seconds", 1, 0, O_SECONDS}, {"warmup", 1, 0, O_WARMUP}, {"drain", 1, 0, O_DRAIN},
        {"from", 1, 0, O_FROM}, {"idle-seconds", 1, 0, O_IDLE}, {"fetch-wait-ms", 1, 0, O_FWAIT},
        {"slice-us", 1, 0, O_SLICE}, {"warmup-topic", 1, 0, O_WTOPIC}, {"wait-go", 0, 0, O_GO},
        {"max-seconds", 1, 0, O_MAX}, {"payload", 1, 0, O_PAYLOAD}, {0, 0, 0, 0}};
    if (argc < 2) usage();
    o.mode = argv[1];
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "b:t:n:s:X:p:", lo, NULL)) != -1) {
        switch (c) {
        case 'b': o.brokers = optarg; break;
        case 't': o.topic = optarg; break;
        case 'p': o.parts = optarg; break;
        case 'n': o.count = atoll(optarg); break;
        case 's': o.size = atoi(optarg); break;
        case 'X': {
            char *eq = strchr(optarg, '=');
            if (!eq || o.nx >= MAX_X) die("bad -X %s", optarg);
            *eq = '\0';
            o.xk[o.nx] = optarg;
            o.xv[o.nx++] = eq + 1;
            break;
        }
        case O_LINGER: o.linger_ms = atof(optarg); break;
        case O_BATCH: o.batch_size = atoll(optarg); break;
        case O_RATE: o.rate = atof(optarg); break;
        case O_SECONDS: o.seconds = atof(optarg); break;
        case O_WARMUP: o.warmup = atof(optarg); break;
        case O_DRAIN: o.drain = atof(optarg); break;
        case O_FROM: o.from = optarg; break;
        case O_IDLE: o.idle = atof(optarg); break;
        case O_FWAIT: o.fetch_wait_ms = atoi(optarg); break;
        case O_SLICE: o.slice_us = atoi(optarg); break;
        case O_WTOPIC: o.warmup_topic = optarg; break;
        case O_GO: o.wait_go = 1; break;
        case O_MAX: o.max_seconds = atof(optarg); break;
        case O_PAYLOAD: o.payload = optarg; break;
        default: usage();
        }
    }
    if (o.slice_us < 10) o.slice_us = 10;
    if (strcmp(o.payload, "same") && strcmp(o.payload, "random") && strcmp(o.payload, "text"))
        die("--payload must be same, random or text");
}

/* ------------------------------------------------------------------------ */
/* librdkafka setup                                                         */

static void cset(rd_kafka_conf_t *conf, const char *k, const char *v) {
    char err[512];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) die("%s=%s: %s", k, v, err);
}

static void cset_num(rd_kafka_conf_t *conf, const char *k, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", v);
    cset(conf, k, buf);
}

static void cset_user(rd_kafka_conf_t *conf) {
    for (int i = 0; i < o.nx; i++) cset(conf, o.xk[i], o.xv[i]);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    if (level <= 4) fprintf(stderr, "rdkperf: librdkafka %s: %s\n", fac, buf);
}

static rd_kafka_conf_t *base_conf(void) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    cset(conf, "bootstrap.servers", o.brokers);
    cset(conf, "client.id", "rdkperf");
    rd_kafka_conf_set_log_cb(conf, log_cb);
    return conf;
}

static rd_kafka_t *make(rd_kafka_type_t type, rd_kafka_conf_t *conf) {
    char err[512];
    cset_user(conf);
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (!rk) die("rd_kafka_new: %s", err);
    return rk;
}

/* Partition count of o.topic (waits for the topic to show up). */
static int partitions_of(rd_kafka_t *rk, const char *topic, int timeout_ms) {
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
    int n = -1;
    while (now_ns() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        last = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        if (last == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0)
                n = md->topics[0].partition_cnt;
            else if (md->topic_cnt == 1)
                last = md->topics[0].err;
            rd_kafka_metadata_destroy(md);
            if (n > 0) break;
        }
        usleep(100000);
    }
    rd_kafka_topic_destroy(rkt);
    if (n <= 0) die("no metadata for topic %s: %s", topic, rd_kafka_err2str(last));
    return n;
}

/* The partitions to use: -p's list, else 0..np-1.  Returns the count. */
static int part_list(int np, int32_t **out) {
    int32_t *v = malloc(sizeof(int32_t) * (size_t)(np > 0 ? np : 1) * 4 + 64);
    int n = 0;
    if (!o.parts) {
        for (int p = 0; p < np; p++) v[n++] = p;
    } else {
        char *dup = strdup(o.parts), *save = NULL;
        for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int p = atoi(tok);
            if (p < 0 || p >= np) die("partition %d not in 0..%d", p, np - 1);
            if (n < np * 4 + 16) v[n++] = p;
        }
        free(dup);
        if (!n) die("empty -p list");
    }
    *out = v;
    return n;
}

static void wait_go(void) {
    if (!o.wait_go) return;
    printf("READY\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) die("stdin closed before GO");
}

static void json_escape(const char *s, char *out, size_t n) {
    size_t j = 0;
    for (; s && *s && j + 7 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { out[j++] = '\\'; out[j++] = ch; }
        else if (ch < 0x20) j += snprintf(out + j, n - j, "\\u%04x", ch);
        else out[j++] = ch;
    }
    out[j] = '\0';
}

/* ------------------------------------------------------------------------ */
/* produce                                                                  */

static struct {
    atomic_llong ok, err;
    atomic_llong t_last_dr;
    char first_err[256];
} P;

static void produce_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk; (void)opaque;
    if (m->err) {
        if (atomic_fetch_add(&P.err, 1) == 0)
            snprintf(P.first_err, sizeof P.first_err, "%s", rd_kafka_err2str(m->err));
    } else {
        atomic_fetch_add(&P.ok, 1);
    }
    atomic_store(&P.t_last_dr, now_ns());
}

static rd_kafka_conf_t *producer_conf(double linger_ms) {
    rd_kafka_conf_t *conf = base_conf();
    cset(conf, "acks", "all");
    cset(conf, "enable.idempotence", "true");
    cset_num(conf, "linger.ms", linger_ms);
    cset_num(conf, "batch.size", (double)o.batch_size);
    cset(conf, "batch.num.messages", "1000000");
    cset(conf, "compression.type", "none");
    cset(conf, "queue.buffering.max.messages", "2000000");
    cset(conf, "queue.buffering.max.kbytes", "2097151");
    return conf;
}

/* Send one record to the warm-up topic and wait for it: the idempotent
 * producer's id is then acquired before anything is timed. */
static void warm_producer(rd_kafka_t *rk) {
    if (!o.warmup_topic) return;
    rd_kafka_resp_err_t e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(o.warmup_topic),
                                              RD_KAFKA_V_VALUE("warm-up", 7),
                                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e) die("warm-up produce: %s", rd_kafka_err2str(e));
    rd_kafka_flush(rk, 30000);
}

/* xorshift64*: cheap pseudo-random bytes for the payload pools */
static uint64_t xs_state;
static uint64_t xs_next(void) {
    xs_state ^= xs_state >> 12;
    xs_state ^= xs_state << 25;
    xs_state ^= xs_state >> 27;
    return xs_state * 0x2545F4914F6CDD1DULL;
}

/* The record values (--payload).  `same`: one buffer of o.size rand() bytes
 * that every record points at (*pool_len = 0).  `random` / `text`: a pool of
 * 64 MiB + o.size bytes that records walk through slice by slice, so values
 * differ and nothing repeats within 64 MiB; seeded per process, so that
 * concurrent producers send different bytes. */
static char *make_payload(size_t *pool_len) {
    size_t size = o.size > 0 ? (size_t)o.size : 1;
    if (!strcmp(o.payload, "same")) {
        char *b = malloc(size);
        for (size_t i = 0; i < size; i++) b[i] = (char)(rand() & 0xff);
        *pool_len = 0;
        return b;
    }
    size_t n = ((size_t)64 << 20) + size;
    char *b = malloc(n + 16);
    if (!b) die("out of memory for the payload pool");
    xs_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)getpid() << 32) ^ (uint64_t)now_ns();
    if (!xs_state) xs_state = 1;
    if (!strcmp(o.payload, "random")) {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = xs_next();
            memcpy(b + i, &r, 8);
        }
    } else { /* text */
        static char vocab[1024][10];
        uint64_t v = 0x1234567ULL; /* the vocabulary is the same in every process */
        for (int w = 0; w < 1024; w++) {
            v ^= v >> 12; v ^= v << 25; v ^= v >> 27;
            uint64_t r = v * 0x2545F4914F6CDD1DULL;
            int len = 3 + (int)(r % 7);
            for (int k = 0; k < len; k++) vocab[w][k] = (char)('a' + (r >> (8 + 5 * k)) % 26);
            vocab[w][len] = '\0';
        }
        size_t i = 0;
        while (i < n) {
            const char *w = vocab[xs_next() % 1024];
            while (*w && i < n) b[i++] = *w++;
            if (i < n) b[i++] = ' ';
        }
    }
    *pool_len = n;
    return b;
}

static int mode_produce(void) {
    if (!o.topic || (o.count <= 0 && !(o.rate > 0 && o.seconds > 0))) die("produce needs -t and -n (or --rate and --seconds)");
    if (o.count <= 0) o.count = (long long)(o.rate * o.seconds);
    rd_kafka_conf_t *conf = producer_conf(o.linger_ms >= 0 ? o.linger_ms : 10);
    rd_kafka_conf_set_dr_msg_cb(conf, produce_dr);
    rd_kafka_t *rk = make(RD_KAFKA_PRODUCER, conf);
    int np = partitions_of(rk, o.topic, 30000);
    int32_t *pl;
    int npl = part_list(np, &pl);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, o.topic, NULL);
    warm_producer(rk);
    atomic_store(&P.ok, 0);
    atomic_store(&P.err, 0);
    P.first_err[0] = '\0';

    size_t pool_len = 0, pool_off = 0;
    char *payload = make_payload(&pool_len);

    wait_go();
    double cpu0 = cpu_s();
    int64_t t0 = now_ns();
    int64_t deadline = t0 + (int64_t)(o.max_seconds * 1e9);
    int64_t stop_at = o.seconds > 0 ? t0 + (int64_t)(o.seconds * 1e9) : INT64_MAX;
    int64_t slice = (int64_t)o.slice_us * 1000;
    long long sent = 0;
    int truncated = 0;
    int pi = 0;
    while (sent < o.count) {
        long long due = o.count;
        if (o.rate > 0) {
            int64_t now = now_ns();
            if (now >= stop_at) break;
            due = (long long)((double)(now - t0) * o.rate / 1e9) + 1;
            if (due > o.count) due = o.count;
            if (due <= sent) {
                rd_kafka_poll(rk, 0);
                sleep_until_ns(now + slice);
                continue;
            }
        }
        long long chunk = due - sent;
        if (chunk > 10000) chunk = 10000;
        for (long long i = 0; i < chunk; i++) {
            /* no copy: the payload buffer outlives every record */
            char *val = payload;
            if (pool_len) { /* random/text: the next slice of the pool */
                val = payload + pool_off;
                pool_off += (size_t)o.size;
                if (pool_off + (size_t)o.size > pool_len) pool_off = 0;
            }
            while (rd_kafka_produce(rkt, pl[pi], 0, val, (size_t)o.size, NULL, 0, NULL) == -1) {
                rd_kafka_resp_err_t e = rd_kafka_last_error();
                if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) die("produce: %s", rd_kafka_err2str(e));
                rd_kafka_poll(rk, 1);
            }
            if (++pi == npl) pi = 0;
        }
        sent += chunk;
        rd_kafka_poll(rk, 0);
        int64_t now = now_ns();
        if (now > deadline) { truncated = 1; break; }
        if (now >= stop_at) break; /* --seconds without --rate: produce flat out for T s */
    }
    int64_t left = deadline - now_ns();
    rd_kafka_flush(rk, left > 5000000000LL ? (int)(left / 1000000) : 5000);
    int unflushed = rd_kafka_outq_len(rk);
    long long ok = atomic_load(&P.ok), err = atomic_load(&P.err);
    int64_t t_end = atomic_load(&P.t_last_dr);
    if (t_end < t0) t_end = now_ns();
    char esc[600];
    json_escape(P.first_err, esc, sizeof esc);
    printf("{\"mode\": \"produce\", \"records\": %lld, \"bytes\": %lld, \"seconds\": %.6f, \"errors\": %lld, "
           "\"sent\": %lld, \"unflushed\": %d, \"truncated\": %s, \"partitions\": %d, "
           "\"t_start_ns\": %" PRId64 ", \"t_end_ns\": %" PRId64 ", \"cpu_s\": %.3f, \"first_error\": \"%s\", "
           "\"payload\": \"%s\", \"librdkafka\": \"%s\"}\n",
           ok, ok * o.size, (t_end - t0) / 1e9, err + unflushed, sent, unflushed, truncated ? "true" : "false",
           np, t0, t_end, cpu_s() - cpu0, esc, o.payload, rd_kafka_version_str());
    fflush(stdout);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    free(payload);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* consume                                                                  */

static rd_kafka_t *make_consumer(int fetch_wait_ms, int for_latency) {
    rd_kafka_conf_t *conf = base_conf();
    char gid[96];
    snprintf(gid, sizeof gid, "rdkperf-%d-%" PRId64, (int)getpid(), now_ns());
    cset(conf, "group.id", gid); /* never joined: partitions are assigned */
    cset(conf, "enable.auto.commit", "false");
    cset(conf, "enable.auto.offset.store", "false");
    cset(conf, "enable.partition.eof", "false");
    cset_num(conf, "fetch.wait.max.ms", fetch_wait_ms);
    cset(conf, "fetch.min.bytes", "1");
    if (!for_latency) {
        cset(conf, "fetch.message.max.bytes", "1048576"); /* = max.partition.fetch.bytes */
        cset(conf, "fetch.max.bytes", "52428800");
        cset(conf, "queued.min.messages", "1000000");
        cset(conf, "queued.max.messages.kbytes", "262144");
    }
    rd_kafka_t *rk = make(RD_KAFKA_CONSUMER, conf);
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static void assign_list(rd_kafka_t *rk, const char *topic, const int32_t *pl, int n, int64_t offset) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++) rd_kafka_topic_partition_list_add(l, topic, pl[i])->offset = offset;
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) die("assign: %s", rd_kafka_err2str(e));
}

static int mode_consume(void) {
    if (!o.topic || o.count <= 0) die("consume needs -t and -n");
    rd_kafka_t *rk = make_consumer(o.fetch_wait_ms >= 0 ? o.fetch_wait_ms : 100, 0);
    int np = partitions_of(rk, o.topic, 30000);
    int32_t *pl;
    int npl = part_list(np, &pl);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
    enum { BATCH = 10000 };
    rd_kafka_message_t **msgs = malloc(sizeof(*msgs) * BATCH);
    wait_go();
    double cpu0 = cpu_s();
    int64_t t0 = now_ns();
    int64_t deadline = t0 + (int64_t)(o.max_seconds * 1e9);
    int64_t idle = (int64_t)(o.idle * 1e9);
    assign_list(rk, o.topic, pl, npl, RD_KAFKA_OFFSET_BEGINNING);
    long long n = 0, bytes = 0, errors = 0;
    int64_t t_last = t0;
    char first_err[256] = "";
    int truncated = 0;
    while (n < o.count) {
        ssize_t k = rd_kafka_consume_batch_queue(q, 100, msgs, BATCH);
        int64_t now = now_ns();
        if (k < 0) die("consume_batch_queue: %s", rd_kafka_err2str(rd_kafka_last_error()));
        for (ssize_t i = 0; i < k; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && errors++ == 0)
                    snprintf(first_err, sizeof first_err, "%s", rd_kafka_message_errstr(m));
            } else {
                n++;
                bytes += (long long)m->len;
            }
            rd_kafka_message_destroy(m);
        }
        if (k > 0) t_last = now;
        else if (now - t_last > idle) break;
        if (now > deadline) { truncated = 1; break; }
    }
    char esc[600];
    json_escape(first_err, esc, sizeof esc);
    printf("{\"mode\": \"consume\", \"records\": %lld, \"bytes\": %lld, \"seconds\": %.6f, \"errors\": %lld, "
           "\"truncated\": %s, \"partitions\": %d, \"t_start_ns\": %" PRId64 ", \"t_end_ns\": %" PRId64
           ", \"cpu_s\": %.3f, \"first_error\": \"%s\", \"librdkafka\": \"%s\"}\n",
           n, bytes, (t_last - t0) / 1e9, errors, truncated ? "true" : "false", np, t0, t_last, cpu_s() - cpu0,
           esc, rd_kafka_version_str());
    fflush(stdout);
    free(msgs);
    rd_kafka_queue_destroy(q);
    rd_kafka_assign(rk, NULL);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* latency                                                                  */

typedef struct {
    int64_t *v;
    size_t n, cap;
} vec_t;

static void vec_push(vec_t *a, int64_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 1 << 16;
        a->v = realloc(a->v, a->cap * sizeof(int64_t));
        if (!a->v) die("out of memory");
    }
    a->v[a->n++] = x;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const vec_t *a, double q) { /* nearest rank */
    if (!a->n) return -1;
    size_t idx = (size_t)(q * (double)a->n + 0.999999999);
    if (idx < 1) idx = 1;
    if (idx > a->n) idx = a->n;
    return a->v[idx - 1] / 1e6;
}

static struct {
    int64_t win_from, win_to; /* send-time window that is measured */
    atomic_int stop_dr, stop_consumer;
    vec_t ack, e2e; /* ack: touched by the DR thread only; e2e: by the consumer thread only */
    atomic_llong ok, err, consumed, in_window_consumed;
    char first_err[256];
    rd_kafka_t *prod, *cons;
} L;

static void latency_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk; (void)opaque;
    int64_t now = now_ns();
    if (m->err) {
        if (atomic_fetch_add(&L.err, 1) == 0)
            snprintf(L.first_err, sizeof L.first_err, "%s", rd_kafka_err2str(m->err));
        return;
    }
    atomic_fetch_add(&L.ok, 1);
    if (m->len < 8) return;
    int64_t ts;
    memcpy(&ts, m->payload, 8);
    if (ts >= L.win_from && ts < L.win_to) vec_push(&L.ack, now - ts);
}

static void *dr_thread(void *arg) {
    (void)arg;
    while (!atomic_load(&L.stop_dr)) rd_kafka_poll(L.prod, 50);
    return NULL;
}

static void latency_record(rd_kafka_message_t *m, int64_t now) {
    if (!m->err && m->len >= 8) {
        int64_t ts;
        memcpy(&ts, m->payload, 8);
        atomic_fetch_add_explicit(&L.consumed, 1, memory_order_relaxed);
        if (ts >= L.win_from && ts < L.win_to) {
            vec_push(&L.e2e, now - ts);
            atomic_fetch_add_explicit(&L.in_window_consumed, 1, memory_order_relaxed);
        }
    }
    rd_kafka_message_destroy(m);
}

/* Takes whatever is already queued in one non-blocking batch call (cheap at
 * high rates); when nothing is, blocks in rd_kafka_consumer_poll(), which
 * returns as soon as one record arrives (consume_batch_queue with a timeout
 * would wait for a full batch and add that wait to every sample). */
static void *consumer_thread(void *arg) {
    (void)arg;
    enum { BATCH = 1000 };
    rd_kafka_message_t *msgs[BATCH];
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(L.cons);
    while (!atomic_load(&L.stop_consumer)) {
        ssize_t k = rd_kafka_consume_batch_queue(q, 0, msgs, BATCH);
        if (k > 0) {
            int64_t now = now_ns();
            for (ssize_t i = 0; i < k; i++) latency_record(msgs[i], now);
            continue;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(L.cons, 50);
        if (m) latency_record(m, now_ns());
    }
    rd_kafka_queue_destroy(q);
    return NULL;
}

static int mode_latency(void) {
    if (!o.topic || o.rate <= 0 || o.seconds <= 0) die("latency needs -t, --rate and --seconds");
    if (o.size < 8) o.size = 8;
    rd_kafka_conf_t *conf = producer_conf(o.linger_ms >= 0 ? o.linger_ms : 1);
    rd_kafka_conf_set_dr_msg_cb(conf, latency_dr);
    L.prod = make(RD_KAFKA_PRODUCER, conf);
    int np = partitions_of(L.prod, o.topic, 30000);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(L.prod, o.topic, NULL);
    L.cons = make_consumer(o.fetch_wait_ms >= 0 ? o.fetch_wait_ms : 100, 1);
    partitions_of(L.cons, o.topic, 30000);
    warm_producer(L.prod);
    atomic_store(&L.ok, 0);
    atomic_store(&L.err, 0);
    L.win_from = INT64_MAX; /* nothing measured until the schedule is fixed */
    L.win_to = INT64_MAX;
    int from_end = strcmp(o.from, "beginning") != 0;
    int32_t *pl;
    o.parts = NULL; /* latency: always every partition */
    part_list(np, &pl);
    assign_list(L.cons, o.topic, pl, np, from_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING);

    pthread_t tdr, tc;
    pthread_create(&tc, NULL, consumer_thread, NULL);
    pthread_create(&tdr, NULL, dr_thread, NULL);
    usleep(200000); /* let the consumer resolve its offsets and issue its first fetch */

    double cpu0 = cpu_s();
    int64_t t0 = now_ns();
    int64_t w_from = t0 + (int64_t)(o.warmup * 1e9);
    int64_t w_to = w_from + (int64_t)(o.seconds * 1e9);
    /* the window is written before any record carrying a time inside it exists */
    L.win_from = w_from;
    L.win_to = w_to;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    char *buf = malloc((size_t)o.size);
    for (int i = 0; i < o.size; i++) buf[i] = (char)(rand() & 0xff);
    int64_t slice = (int64_t)o.slice_us * 1000;
    long long sent = 0, sent_in_window = 0, queue_full = 0;
    int32_t part = 0;
    int64_t next = t0;
    for (;;) {
        int64_t now = now_ns();
        if (now >= w_to) break;
        long long due = (long long)((double)(now - t0) * o.rate / 1e9) + 1;
        while (sent < due) {
            int64_t ts = now_ns();
            if (ts >= w_to) break;
            memcpy(buf, &ts, 8);
            while (rd_kafka_produce(rkt, part, RD_KAFKA_MSG_F_COPY, buf, (size_t)o.size, NULL, 0, NULL) == -1) {
                rd_kafka_resp_err_t e = rd_kafka_last_error();
                if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) die("produce: %s", rd_kafka_err2str(e));
                queue_full++;
                usleep(200);
            }
            if (++part == np) part = 0;
            sent++;
            if (ts >= w_from) sent_in_window++;
        }
        next += slice;
        if (next > now) sleep_until_ns(next);
        else next = now;
    }
    int64_t t_prod_end = now_ns();
    /* wait for the window's records to come back (bounded) */
    int64_t drain_until = t_prod_end + (int64_t)(o.drain * 1e9);
    while (now_ns() < drain_until && atomic_load(&L.in_window_consumed) < sent_in_window) usleep(10000);
    atomic_store(&L.stop_consumer, 1);
    pthread_join(tc, NULL);
    int64_t flush_left = drain_until - now_ns();
    atomic_store(&L.stop_dr, 1);
    pthread_join(tdr, NULL);
    rd_kafka_flush(L.prod, flush_left > 1000000000LL ? (int)(flush_left / 1000000) : 1000);
    int unflushed = rd_kafka_outq_len(L.prod);
    double cpu_used = cpu_s() - cpu0;

    qsort(L.e2e.v, L.e2e.n, sizeof(int64_t), cmp64);
    qsort(L.ack.v, L.ack.n, sizeof(int64_t), cmp64);
    char esc[600];
    json_escape(L.first_err, esc, sizeof esc);
    printf("{\"mode\": \"latency\", \"target_rate\": %.3f, \"achieved_rate\": %.3f, \"seconds\": %.3f, "
           "\"warmup_seconds\": %.3f, \"record_bytes\": %d, \"partitions\": %d, \"linger_ms\": %g, "
           "\"sent\": %lld, \"sent_in_window\": %lld, \"consumed\": %lld, \"samples\": %zu, "
           "\"ack_samples\": %zu, \"errors\": %lld, \"unflushed\": %d, \"queue_full_waits\": %lld, "
           "\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, \"max_ms\": %.4f, "
           "\"ack_p50_ms\": %.4f, \"ack_p99_ms\": %.4f, \"ack_p999_ms\": %.4f, \"ack_max_ms\": %.4f, "
           "\"cpu_s\": %.3f, \"first_error\": \"%s\", \"librdkafka\": \"%s\"}\n",
           o.rate, sent_in_window / o.seconds, o.seconds, o.warmup, o.size, np,
           o.linger_ms >= 0 ? o.linger_ms : 1, sent, sent_in_window, (long long)atomic_load(&L.consumed),
           L.e2e.n, L.ack.n, (long long)atomic_load(&L.err), unflushed, queue_full,
           pct_ms(&L.e2e, 0.50), pct_ms(&L.e2e, 0.99), pct_ms(&L.e2e, 0.999),
           L.e2e.n ? L.e2e.v[L.e2e.n - 1] / 1e6 : -1.0, pct_ms(&L.ack, 0.50), pct_ms(&L.ack, 0.99),
           pct_ms(&L.ack, 0.999), L.ack.n ? L.ack.v[L.ack.n - 1] / 1e6 : -1.0, cpu_used, esc,
           rd_kafka_version_str());
    fflush(stdout);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_consumer_close(L.cons);
    rd_kafka_destroy(L.cons);
    rd_kafka_destroy(L.prod);
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------------ */

static int mode_metadata(void) {
    rd_kafka_t *rk = make(RD_KAFKA_PRODUCER, base_conf());
    const struct rd_kafka_metadata *md = NULL;
    int64_t deadline = now_ns() + (int64_t)(o.max_seconds * 1e9);
    rd_kafka_resp_err_t e;
    do {
        e = rd_kafka_metadata(rk, 1, NULL, &md, 2000);
    } while (e && now_ns() < deadline);
    if (e) {
        printf("{\"ok\": false, \"error\": \"%s\", \"librdkafka\": \"%s\"}\n", rd_kafka_err2str(e),
               rd_kafka_version_str());
        rd_kafka_destroy(rk);
        return 1;
    }
    printf("{\"ok\": true, \"brokers\": %d, \"topics\": %d, \"librdkafka\": \"%s\"}\n", md->broker_cnt,
           md->topic_cnt, rd_kafka_version_str());
    rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return 0;
}

int main(int argc, char **argv) {
    parse(argc, argv);
    srand((unsigned)getpid());
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(o.mode, "version")) {
        printf("{\"librdkafka\": \"%s\"}\n", rd_kafka_version_str());
        return 0;
    }
    /* hard bound: a stuck broker or client cannot keep this process alive */
    double bound = o.max_seconds + 30;
    if (!strcmp(o.mode, "latency")) bound += o.warmup + o.seconds + o.drain;
    alarm((unsigned)bound);
    if (!strcmp(o.mode, "metadata")) return mode_metadata();
    if (!strcmp(o.mode, "produce")) return mode_produce();
    if (!strcmp(o.mode, "consume")) return mode_consume();
    if (!strcmp(o.mode, "latency")) return mode_latency();
    usage();
}
