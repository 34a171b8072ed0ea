/* Compiled as C (not C++): engram.h is a C header. Called from capi_test.cpp. */
#include <stddef.h>
#include <string.h>

#include "engram/engram.h"

/* Opens the store at `dir`, runs one CPU-backend step of `n` tokens on a fresh sequence, and returns
 * the sum of the bytes of layer 0's rows, or -1 on any error (the message is engram_last_error()). */
long long engram_c_test_one_step(const char* dir, const int32_t* tokens, size_t n) {
  engram_store* store = NULL;
  engram_runtime* rt = NULL;
  engram_runtime_options o;
  engram_sequence_input in;
  engram_layer_output out;
  uint64_t seq = 0, step = 0;
  long long sum = -1;
  if (engram_store_open(dir, NULL, &store) != ENGRAM_OK) return -1;
  engram_runtime_options_init(&o);
  o.backend = ENGRAM_BACKEND_CPU;
  if (engram_runtime_create(store, &o, &rt) != ENGRAM_OK) goto done;
  if (engram_sequence_create(rt, &seq) != ENGRAM_OK) goto done;
  memset(&in, 0, sizeof in);
  in.sequence = seq;
  in.tokens = tokens;
  in.num_tokens = n;
  if (engram_step_submit(rt, &in, 1, &step) != ENGRAM_OK) goto done;
  if (engram_step_wait(rt, step, 0) != ENGRAM_OK) goto done;
  memset(&out, 0, sizeof out);
  out.struct_size = sizeof out;
  if (engram_step_output(rt, step, 0, &out) != ENGRAM_OK) goto done;
  if (out.memory != ENGRAM_MEMORY_HOST) goto done;
  {
    const unsigned char* p = (const unsigned char*)out.rows;
    size_t bytes = (size_t)out.tokens * (size_t)out.columns * out.row_bytes;
    size_t i;
    sum = 0;
    for (i = 0; i < bytes; ++i) sum += p[i];
  }
  if (engram_step_finish(rt, step) != ENGRAM_OK) sum = -1;
done:
  engram_runtime_destroy(rt);
  engram_store_close(store);
  return sum;
}
