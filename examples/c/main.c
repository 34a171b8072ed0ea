/* engram from C: open a store, serve a prefill and a few decode steps of one sequence, print a checksum
 * of each layer's rows and the statistics in the Prometheus format.
 *
 *   engram_c_example STORE_DIR [TOKEN ...]      (compressed ids; default: a few ids below V')
 */
#include <engram/engram.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                  \
  do {                                                                                               \
    engram_status s_ = (call);                                                                       \
    if (s_ != ENGRAM_OK) {                                                                           \
      fprintf(stderr, "%s: %s: %s\n", #call, engram_status_name(s_), engram_last_error());           \
      exit(1);                                                                                       \
    }                                                                                                \
  } while (0)

static unsigned long long Checksum(const engram_layer_output* out) {
  const unsigned char* p = (const unsigned char*)out->rows;
  size_t n = (size_t)out->tokens * (size_t)out->columns * out->row_bytes, i;
  unsigned long long h = 1469598103934665603ULL; /* FNV-1a */
  for (i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

int main(int argc, char** argv) {
  engram_store* store = NULL;
  engram_runtime* rt = NULL;
  engram_store_info info;
  engram_runtime_options o;
  int32_t tokens[64];
  size_t n = 0, i;
  uint64_t seq = 0;
  size_t needed = 0;
  char* text;
  int l;
  if (argc < 2) {
    fprintf(stderr, "usage: %s STORE_DIR [TOKEN ...]\n", argv[0]);
    return 2;
  }
  CHECK(engram_store_open(argv[1], NULL, &store));
  info.struct_size = sizeof info;
  CHECK(engram_store_get_info(store, &info));
  for (i = 2; i < (size_t)argc && n < 64; ++i) tokens[n++] = (int32_t)atoi(argv[i]);
  for (; n < 8; ++n) tokens[n] = (int32_t)((n * 7919 + 13) % (size_t)info.compressed_vocab_size);
  printf("engram %s (C API %u): %d Engram layers, %d rows of %u B per token and layer\n", engram_version_string(),
         engram_api_version(), info.num_layers, info.columns, info.row_bytes);

  engram_runtime_options_init(&o);
  o.backend = ENGRAM_BACKEND_CPU; /* host memory; ENGRAM_BACKEND_AUTO would take a GPU if there is one */
  o.host_cache_bytes = 64ULL << 20;
  CHECK(engram_runtime_create(store, &o, &rt));
  CHECK(engram_sequence_create(rt, &seq));
  /* A prefill of all but the last two tokens, then one decode step each. */
  for (i = 0; i < n;) {
    size_t len = i == 0 ? n - 2 : 1;
    engram_sequence_input in;
    uint64_t step = 0;
    memset(&in, 0, sizeof in);
    in.sequence = seq;
    in.tokens = tokens + i;
    in.num_tokens = len;
    CHECK(engram_step_submit(rt, &in, 1, &step));
    for (l = 0; l < info.num_layers; ++l) {
      engram_layer_output out;
      CHECK(engram_step_wait(rt, step, l));
      out.struct_size = sizeof out;
      CHECK(engram_step_output(rt, step, l, &out));
      printf("step %llu layer %d: %lld tokens, rows checksum %016llx\n", (unsigned long long)step, l,
             (long long)out.tokens, Checksum(&out));
    }
    CHECK(engram_step_finish(rt, step));
    i += len;
  }
  if (engram_runtime_stats(rt, ENGRAM_STATS_PROMETHEUS, NULL, 0, &needed) != ENGRAM_OUT_OF_RANGE) return 1;
  text = malloc(needed + 4096);
  CHECK(engram_runtime_stats(rt, ENGRAM_STATS_PROMETHEUS, text, needed + 4096, &needed));
  fputs(text, stdout);
  free(text);
  CHECK(engram_sequence_release(rt, seq));
  engram_runtime_destroy(rt);
  engram_store_close(store);
  return 0;
}
