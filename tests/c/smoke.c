#define _GNU_SOURCE
/* C smoke test of libscale: create an engine from YAML, intern keys, score 1,000 spans in
 * one batch (and in chunks), read decisions, rule names and counters, snapshot and restore
 * (also with the rules in a separate rules text), free.
 * Built and run by `make test-ffi` (under valgrind, or ASAN when valgrind is missing),
 * linked statically with the line documented in rust/ffi/README.md ("Static linking"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scale.h"

static int passed = 0, failed = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (cond) {                                                                     \
            passed++;                                                                   \
        } else {                                                                        \
            failed++;                                                                   \
            fprintf(stderr, "smoke.c:%d: check failed: %s\n", __LINE__, #cond);         \
        }                                                                               \
    } while (0)

#define CHECK_OK(call)                                                                  \
    do {                                                                                \
        scale_status_t st_ = (call);                                                    \
        if (st_ == SCALE_STATUS_OK) {                                                   \
            passed++;                                                                   \
        } else {                                                                        \
            failed++;                                                                   \
            fprintf(stderr, "smoke.c:%d: %s: %d (%s)\n", __LINE__, #call, (int)st_,     \
                    scale_status_str(st_));                                             \
        }                                                                               \
    } while (0)

/* The engine's settings and its rules, also given apart (a rules file's text) to the
 * *_with_rules constructors. A fixed min_score: too few spans to calibrate keep_budget. */
#define SETTINGS "sampler: { window_size: 100, train_size: 500, min_score: 0.9 }\n"
#define RULES                                                                           \
    "rules:\n"                                                                          \
    "  - name: checkout-latency\n"                                                      \
    "    match: { service: checkout }\n"                                                \
    "    when: { duration_above: 200ms }\n"                                             \
    "    count: 3\n"                                                                    \
    "    window: 30s\n"                                                                 \
    "    action: { kind: horizontal, target: { kind: Deployment, name: checkout }, max: 5 }\n"
static const char CONFIG[] = SETTINGS RULES;

#define N 1000
#define T0 1700000000000000000ULL
#define MS 1000000ULL

int main(void) {
    char msg[512];
    size_t msg_len = 0;
    scale_engine_t *engine = NULL;

    /* Version: header and library agree. */
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", SCALE_VERSION_MAJOR, SCALE_VERSION_MINOR, SCALE_VERSION_PATCH);
    CHECK(strcmp(scale_version(), want) == 0);

    /* A bad configuration comes back with its message in the same call. */
    const char *bad = "sampler:\n  n_tress: 3\n";
    CHECK(scale_engine_new((const uint8_t *)bad, strlen(bad), &engine, msg, sizeof msg, &msg_len) ==
          SCALE_STATUS_INVALID_CONFIG);
    CHECK(engine == NULL);
    CHECK(msg_len > 0 && memmem(msg, msg_len, "n_tress", 7) != NULL);

    CHECK_OK(scale_engine_new((const uint8_t *)CONFIG, strlen(CONFIG), &engine, msg, sizeof msg, &msg_len));
    if (engine == NULL) {
        fprintf(stderr, "%.*s\n", (int)msg_len, msg);
        return 1;
    }

    uint32_t checkout = 0, cart = 0;
    CHECK_OK(scale_engine_intern(engine, (const uint8_t *)"checkout", 8, (const uint8_t *)"PlaceOrder", 10, &checkout));
    CHECK_OK(scale_engine_intern(engine, (const uint8_t *)"cart", 4, (const uint8_t *)"GetCart", 7, &cart));
    CHECK(checkout == 0 && cart == 1);

    /* One batch of 1,000 spans; the last 5 checkout spans are slow. */
    uint32_t *keys = malloc(N * sizeof *keys);
    uint64_t *start = malloc(N * sizeof *start), *end = malloc(N * sizeof *end);
    uint8_t *trace_ids = calloc(N, 16), *span_ids = calloc(N, 8);
    double *scores = malloc(N * sizeof *scores);
    uint8_t *keep = malloc(N);
    scale_skip_t *skip = malloc(N * sizeof *skip);
    scale_decision_t decisions[4];
    size_t n_decisions = 0;
    for (size_t i = 0; i < N; i++) {
        keys[i] = (i % 2) ? cart : checkout;
        start[i] = T0 + i * MS;
        uint64_t d = (i % 2) ? 5 + i % 3 : 40 + i % 7;
        if (i >= N - 10 && i % 2 == 0) d = 900;
        end[i] = start[i] + d * MS;
        trace_ids[16 * i] = (uint8_t)i;
        span_ids[8 * i] = (uint8_t)i;
    }
    keys[1] = 4242; /* unknown id: that span is skipped, not an error */
    scale_span_batch_t batch = {.now_ns = T0 + N * MS, .n = N, .key_ids = keys, .start_ns = start,
                                .end_ns = end, .trace_ids = trace_ids, .span_ids = span_ids};
    scale_batch_out_t out = {.scores = scores, .keep = keep, .skip = skip, .decisions = decisions,
                             .decisions_cap = 4};
    CHECK_OK(scale_engine_process(engine, &batch, &out));
    n_decisions = out.decisions_len;
    CHECK(skip[1] == SCALE_SKIP_INVALID_KEY && isnan(scores[1]) && keep[1] == 0);
    CHECK(skip[0] == SCALE_SKIP_NONE && isnan(scores[0])); /* warming up */
    CHECK(skip[N - 1] == SCALE_SKIP_NONE && scores[N - 1] >= 0.0 && scores[N - 1] <= 1.0);
    size_t kept = 0;
    for (size_t i = 0; i < N; i++) kept += keep[i];
    CHECK(keep[N - 2] == 1); /* a 900 ms checkout after 40 ms ones */
    CHECK(n_decisions == 1);
    if (n_decisions >= 1) {
        CHECK(decisions[0].action == SCALE_ACTION_HORIZONTAL);
        CHECK(decisions[0].observed_ms == 900.0 && decisions[0].count == 3);
        CHECK(decisions[0].trace_id.idx[0] == (uint8_t)decisions[0].span_index);
        char name[64];
        size_t name_len = 0;
        CHECK_OK(scale_engine_rule_name(engine, decisions[0].rule_index, name, sizeof name, &name_len));
        CHECK(name_len == 16 && memcmp(name, "checkout-latency", 16) == 0);
    }

    /* The same batch in chunks of 64 spans on a twin engine: the same outputs. */
    scale_engine_t *chunked = NULL;
    CHECK_OK(scale_engine_new((const uint8_t *)CONFIG, strlen(CONFIG), &chunked, msg, sizeof msg, &msg_len));
    uint32_t id = 0;
    CHECK_OK(scale_engine_intern(chunked, (const uint8_t *)"checkout", 8, (const uint8_t *)"PlaceOrder", 10, &id));
    CHECK_OK(scale_engine_intern(chunked, (const uint8_t *)"cart", 4, (const uint8_t *)"GetCart", 7, &id));
    double *c_scores = malloc(N * sizeof *c_scores);
    uint8_t *c_keep = malloc(N);
    scale_skip_t *c_skip = malloc(N * sizeof *c_skip);
    scale_decision_t c_decisions[4];
    size_t c_n = 99;
    for (size_t lo = 0; lo < N; lo += 64) {
        size_t n = N - lo < 64 ? N - lo : 64;
        uint8_t last = lo + n == N;
        scale_span_batch_t chunk = {.now_ns = T0 + N * MS, .n = n, .key_ids = keys + lo, .start_ns = start + lo,
                                    .end_ns = end + lo, .trace_ids = trace_ids + 16 * lo,
                                    .span_ids = span_ids + 8 * lo};
        scale_batch_out_t c_out = {.scores = c_scores + lo, .keep = c_keep + lo, .skip = c_skip + lo,
                                   .decisions = last ? c_decisions : NULL, .decisions_cap = last ? 4 : 0,
                                   .decisions_len = 99};
        CHECK_OK(scale_engine_process_chunk(chunked, &chunk, lo, last, &c_out));
        c_n = c_out.decisions_len;
        CHECK(last || c_n == 0);
    }
    CHECK(memcmp(scores, c_scores, N * sizeof *scores) == 0); /* NaNs compare as bytes */
    CHECK(memcmp(keep, c_keep, N) == 0 && memcmp(skip, c_skip, N * sizeof *skip) == 0);
    CHECK(c_n == n_decisions);
    for (size_t i = 0; i < c_n && i < 4; i++) { /* field by field: the struct has padding */
        const scale_decision_t *x = &decisions[i], *y = &c_decisions[i];
        CHECK(x->rule_index == y->rule_index && x->span_index == y->span_index && x->conflated == y->conflated);
        CHECK(x->count == y->count && x->observed_ms == y->observed_ms && x->time_ns == y->time_ns);
        CHECK(x->action == y->action && memcmp(x->trace_id.idx, y->trace_id.idx, 16) == 0);
    }
    /* A chunk that does not continue the batch is refused; the structs themselves are required. */
    scale_span_batch_t empty = {.now_ns = T0};
    scale_batch_out_t none = {.decisions_len = 99};
    CHECK(scale_engine_process_chunk(chunked, &empty, 5, 1, &none) == SCALE_STATUS_CHUNK_OUT_OF_SEQUENCE);
    CHECK(scale_engine_process(chunked, NULL, &none) == SCALE_STATUS_NULL_ARGUMENT);
    CHECK(scale_engine_process(chunked, &empty, NULL) == SCALE_STATUS_NULL_ARGUMENT);
    CHECK(none.decisions_len == 99);
    scale_engine_free(chunked);
    free(c_scores);
    free(c_keep);
    free(c_skip);

    scale_stats_t stats;
    CHECK_OK(scale_engine_stats(engine, &stats));
    CHECK(stats.spans_seen == N && stats.keys == 2 && stats.spans_skipped.idx[5] == 1);
    CHECK(stats.spans_kept == kept && stats.decisions == 1);

    /* Snapshot into a buffer and restore a twin. */
    size_t size = 0, len = 0;
    CHECK_OK(scale_engine_snapshot_size(engine, &size));
    uint8_t *snap = malloc(size);
    CHECK_OK(scale_engine_snapshot(engine, snap, size, &len));
    CHECK(len == size);
    scale_engine_t *twin = NULL;
    CHECK_OK(scale_engine_restore((const uint8_t *)CONFIG, strlen(CONFIG), snap, len, &twin, msg, sizeof msg, &msg_len));
    scale_stats_t twin_stats;
    CHECK_OK(scale_engine_stats(twin, &twin_stats));
    CHECK(memcmp(&stats, &twin_stats, sizeof stats) == 0);

    /* The same snapshot with the rules given apart: no YAML to merge. */
    scale_engine_t *split = NULL;
    CHECK_OK(scale_engine_restore_with_rules((const uint8_t *)SETTINGS, strlen(SETTINGS), (const uint8_t *)RULES,
                                             strlen(RULES), snap, len, &split, msg, sizeof msg, &msg_len));
    size_t n_rules = 0;
    CHECK_OK(scale_engine_rule_count(split, &n_rules));
    CHECK(n_rules == 1);
    CHECK_OK(scale_engine_stats(split, &twin_stats));
    CHECK(memcmp(&stats, &twin_stats, sizeof stats) == 0);
    scale_engine_free(split);
    /* Rules in both texts are refused, with a message. */
    CHECK(scale_engine_restore_with_rules((const uint8_t *)CONFIG, strlen(CONFIG), (const uint8_t *)RULES,
                                          strlen(RULES), snap, len, &split, msg, sizeof msg,
                                          &msg_len) == SCALE_STATUS_INVALID_CONFIG);
    CHECK(msg_len > 0 && memmem(msg, msg_len, "rules file", 10) != NULL);

    /* Misuse returns a status, never crashes. */
    CHECK(scale_engine_stats(NULL, &stats) == SCALE_STATUS_NULL_ARGUMENT);
    CHECK(scale_engine_snapshot(engine, NULL, 0, &len) == SCALE_STATUS_BUFFER_TOO_SMALL && len == size);
    CHECK(strcmp(scale_status_str(SCALE_STATUS_POISONED), "the handle is poisoned by an earlier panic") == 0);

    scale_engine_free(twin);
    scale_engine_free(engine);
    scale_engine_free(NULL);
    free(snap);
    free(keys);
    free(start);
    free(end);
    free(trace_ids);
    free(span_ids);
    free(scores);
    free(keep);
    free(skip);

    printf("smoke: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
