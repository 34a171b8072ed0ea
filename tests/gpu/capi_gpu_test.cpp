// The C API's GPU backend through libengram.so on the lent GPU: outputs in device memory, waited for on
// the caller's stream, byte for byte what the CPU backend serves for the same tokens (the real trace,
// with DEAD marks, rollback and fork). Skips with a message where no GPU is usable.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../store_util.hpp"
#include "engram/engram.h"
#include "engram/gpu/device.hpp"

namespace engram {
namespace {

#define REQUIRE_GPU()                                                                       \
  do {                                                                                      \
    auto dev_ = gpu::CurrentDevice();                                                       \
    if (!dev_.ok()) GTEST_SKIP() << "skipped: no usable GPU: " << dev_.status().ToString(); \
  } while (0)

struct Opened {
  std::unique_ptr<test::IngestedStore> f;
  engram_store* store = nullptr;
  engram_runtime* cpu = nullptr;
  engram_runtime* gpu = nullptr;
  ~Opened() {
    engram_runtime_destroy(gpu);
    engram_runtime_destroy(cpu);
    engram_store_close(store);
  }
};

void Open(Opened& o, engram_miss_path path) {
  o.f = test::MakeIngestedStore("deepseek-v4.1-flash", 0.0001);
  o.f->version = {};
  o.f->store.reset();
  ASSERT_EQ(engram_store_open(o.f->dir.File("store").c_str(), nullptr, &o.store), ENGRAM_OK) << engram_last_error();
  engram_runtime_options opt;
  engram_runtime_options_init(&opt);
  opt.backend = ENGRAM_BACKEND_CPU;
  ASSERT_EQ(engram_runtime_create(o.store, &opt, &o.cpu), ENGRAM_OK) << engram_last_error();
  opt.backend = ENGRAM_BACKEND_AUTO;  // a GPU is usable: AUTO must take it
  opt.resident = ENGRAM_RESIDENT_ALL;
  opt.hbm_cache_bytes = 4ULL << 20;  // small: hits, misses and evictions
  opt.max_tokens = 256;
  opt.miss_path = path;
  ASSERT_EQ(engram_runtime_create(o.store, &opt, &o.gpu), ENGRAM_OK) << engram_last_error();
  ASSERT_EQ(engram_runtime_backend(o.gpu), ENGRAM_BACKEND_GPU);
}

// Submits the same step to both runtimes (to the GPU one with host ids, or with ids in device memory
// written on `stream`) and compares every layer's rows and BF16.
void StepAndCompare(Opened& o, const std::vector<std::uint64_t>& cpu_seqs, const std::vector<std::uint64_t>& gpu_seqs,
                    const std::vector<std::vector<std::int32_t>>& toks,
                    const std::vector<std::vector<std::uint8_t>>& dead, cudaStream_t stream, const std::string& what,
                    bool device_ids = false) {
  std::vector<engram_sequence_input> in_cpu, in_gpu;
  std::vector<engram_device_sequence_input> in_dev;
  std::vector<std::int32_t> all;
  for (std::size_t b = 0; b < toks.size(); ++b) {
    const std::uint8_t* d = dead[b].empty() ? nullptr : dead[b].data();
    in_cpu.push_back({cpu_seqs[b], toks[b].data(), toks[b].size(), d});
    in_gpu.push_back({gpu_seqs[b], toks[b].data(), toks[b].size(), d});
    in_dev.push_back({gpu_seqs[b], static_cast<std::int64_t>(toks[b].size()), d});
    all.insert(all.end(), toks[b].begin(), toks[b].end());
  }
  std::uint64_t sc = 0, sg = 0;
  ASSERT_EQ(engram_step_submit(o.cpu, in_cpu.data(), in_cpu.size(), &sc), ENGRAM_OK) << engram_last_error();
  std::int32_t* d_ids = nullptr;
  if (device_ids) {
    // The engine's sampled ids: written on `stream`, which the step waits for on the device.
    ASSERT_EQ(cudaMallocAsync(reinterpret_cast<void**>(&d_ids), all.size() * 4, stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(d_ids, all.data(), all.size() * 4, cudaMemcpyHostToDevice, stream), cudaSuccess);
    ASSERT_EQ(
        engram_step_submit_device_ids(o.gpu, in_dev.data(), in_dev.size(), d_ids, ENGRAM_IDS_COMPRESSED, stream, &sg),
        ENGRAM_OK)
        << engram_last_error();
    ASSERT_EQ(cudaFreeAsync(d_ids, stream), cudaSuccess);
  } else {
    ASSERT_EQ(engram_step_submit(o.gpu, in_gpu.data(), in_gpu.size(), &sg), ENGRAM_OK) << engram_last_error();
  }
  engram_store_info info;
  info.struct_size = sizeof(info);
  ASSERT_EQ(engram_store_get_info(o.store, &info), ENGRAM_OK);
  for (int l = 0; l < info.num_layers; ++l) {
    ASSERT_EQ(engram_step_wait(o.cpu, sc, l), ENGRAM_OK) << engram_last_error();
    engram_layer_output hc, dg;
    hc.struct_size = sizeof(hc);
    dg.struct_size = sizeof(dg);
    ASSERT_EQ(engram_step_output(o.cpu, sc, l, &hc), ENGRAM_OK);
    ASSERT_EQ(engram_step_wait_stream(o.gpu, sg, l, stream), ENGRAM_OK) << engram_last_error();
    ASSERT_EQ(engram_step_output(o.gpu, sg, l, &dg), ENGRAM_OK) << engram_last_error();
    ASSERT_EQ(dg.memory, ENGRAM_MEMORY_DEVICE);
    ASSERT_EQ(dg.tokens, hc.tokens);
    const std::size_t rows = static_cast<std::size_t>(hc.tokens) * static_cast<std::size_t>(hc.columns) * hc.row_bytes;
    const std::size_t bf16 = static_cast<std::size_t>(hc.tokens) * static_cast<std::size_t>(hc.columns) * hc.dim;
    std::vector<std::byte> got_rows(rows);
    std::vector<std::uint16_t> got_bf16(bf16);
    ASSERT_EQ(cudaMemcpyAsync(got_rows.data(), dg.rows, rows, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(got_bf16.data(), dg.bf16, bf16 * 2, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(engram_step_done_stream(o.gpu, sg, l, stream), ENGRAM_OK) << engram_last_error();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(engram_step_wait(o.gpu, sg, l), ENGRAM_OK) << engram_last_error();
    EXPECT_EQ(std::memcmp(got_rows.data(), hc.rows, rows), 0) << what << " layer " << l;
    EXPECT_EQ(std::memcmp(got_bf16.data(), hc.bf16, bf16 * 2), 0) << what << " layer " << l;
  }
  ASSERT_EQ(engram_step_finish(o.cpu, sc), ENGRAM_OK);
  ASSERT_EQ(engram_step_finish(o.gpu, sg), ENGRAM_OK);
}

void RunWorkload(engram_miss_path path, bool device_ids = false) {
  Opened o;
  Open(o, path);
  if (o.gpu == nullptr) return;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  const auto& trace = test::BrownCompressed();
  constexpr std::size_t kSeqs = 4;
  std::vector<std::uint64_t> cs(kSeqs), gs(kSeqs);
  for (std::size_t b = 0; b < kSeqs; ++b) {
    ASSERT_EQ(engram_sequence_create(o.cpu, &cs[b]), ENGRAM_OK);
    ASSERT_EQ(engram_sequence_create(o.gpu, &gs[b]), ENGRAM_OK);
  }
  std::size_t at = 3000;
  auto take = [&](std::size_t n) {
    std::vector<std::int32_t> v(trace.begin() + static_cast<std::ptrdiff_t>(at),
                                trace.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += n;
    return v;
  };
  // A prefill of 40 tokens each (one with DEAD marks), then 30 decode steps; a rollback and a fork half way.
  std::vector<std::vector<std::int32_t>> toks;
  std::vector<std::vector<std::uint8_t>> dead(kSeqs);
  for (std::size_t b = 0; b < kSeqs; ++b) toks.push_back(take(40));
  dead[1].assign(40, 0);
  dead[1][17] = 1;
  StepAndCompare(o, cs, gs, toks, dead, stream, "prefill", device_ids);
  for (int step = 0; step < 30; ++step) {
    if (step == 15) {
      ASSERT_EQ(engram_sequence_rollback(o.cpu, cs[2], 5), ENGRAM_OK);
      ASSERT_EQ(engram_sequence_rollback(o.gpu, gs[2], 5), ENGRAM_OK);
      ASSERT_EQ(engram_sequence_release(o.cpu, cs[3]), ENGRAM_OK);
      ASSERT_EQ(engram_sequence_release(o.gpu, gs[3]), ENGRAM_OK);
      ASSERT_EQ(engram_sequence_fork(o.cpu, cs[0], &cs[3]), ENGRAM_OK);
      ASSERT_EQ(engram_sequence_fork(o.gpu, gs[0], &gs[3]), ENGRAM_OK);
    }
    toks.clear();
    std::vector<std::vector<std::uint8_t>> d(kSeqs);
    for (std::size_t b = 0; b < kSeqs; ++b) toks.push_back(take(1));
    if (step % 7 == 3) d[0] = {1};
    StepAndCompare(o, cs, gs, toks, d, stream, "decode " + std::to_string(step), device_ids);
  }
  std::size_t needed = 0;
  EXPECT_EQ(engram_runtime_stats(o.gpu, ENGRAM_STATS_JSON, nullptr, 0, &needed), ENGRAM_OUT_OF_RANGE);
  std::string buf(needed + 4096, '\0');
  ASSERT_EQ(engram_runtime_stats(o.gpu, ENGRAM_STATS_JSON, buf.data(), buf.size(), &needed), ENGRAM_OK);
  const auto j = nlohmann::json::parse(buf.c_str());
  EXPECT_EQ(j["layers"], 31 * 2) << buf;
  EXPECT_GT(j["cache_hits"].get<std::uint64_t>(), 0U) << buf;
  cudaStreamDestroy(stream);
}

TEST(CApiGpu, TheDevicePipelineServesWhatTheCpuBackendServes) {
  REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  RunWorkload(ENGRAM_MISS_DEVICE);
}

TEST(CApiGpu, TheStagedPathServesWhatTheCpuBackendServes) {
  REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  RunWorkload(ENGRAM_MISS_STAGED);
}

TEST(CApiGpu, IdsInDeviceMemoryServeWhatTheCpuBackendServes) {
  REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  RunWorkload(ENGRAM_MISS_DEVICE, true);
}

TEST(CApiGpu, IdsInDeviceMemoryNeedTheDevicePipeline) {
  REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  Opened o;
  Open(o, ENGRAM_MISS_STAGED);
  std::uint64_t seq = 0, step = 0;
  ASSERT_EQ(engram_sequence_create(o.gpu, &seq), ENGRAM_OK);
  std::int32_t* d_ids = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_ids), 4), cudaSuccess);
  const engram_device_sequence_input in = {seq, 1, nullptr};
  EXPECT_EQ(engram_step_submit_device_ids(o.gpu, &in, 1, d_ids, ENGRAM_IDS_COMPRESSED, nullptr, &step),
            ENGRAM_FAILED_PRECONDITION);
  EXPECT_NE(std::string(engram_last_error()).find("engram_step_submit_device_ids"), std::string::npos)
      << engram_last_error();
  cudaFree(d_ids);
}

// The consuming side captured once per slot in a CUDA graph (slot wait, a copy of the slot's BF16 output,
// slot done) and replayed for every decode step in that slot: the copies equal the CPU backend's output.
TEST(CApiGpu, SlotCallsCapturedInAGraphServeWhatTheCpuBackendServes) {
  REQUIRE_GPU();
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  Opened o;
  Open(o, ENGRAM_MISS_DEVICE);
  if (o.gpu == nullptr) return;
  engram_store_info info;
  info.struct_size = sizeof(info);
  ASSERT_EQ(engram_store_get_info(o.store, &info), ENGRAM_OK);
  const int layers = info.num_layers;
  constexpr std::size_t kSeqs = 4;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::size_t per_layer = 0;  // BF16 values of one decode step's layer
  std::uint16_t* consumed = nullptr;
  cudaGraphExec_t exec[2] = {nullptr, nullptr};
  for (std::uint32_t slot = 0; slot < 2; ++slot) {
    engram_layer_output out;
    out.struct_size = sizeof(out);
    ASSERT_EQ(engram_slot_output(o.gpu, slot, 0, &out), ENGRAM_OK) << engram_last_error();
    ASSERT_EQ(out.tokens, 256);  // the capacity: max_tokens
    per_layer = kSeqs * static_cast<std::size_t>(out.columns) * out.dim;
    if (consumed == nullptr) {
      ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&consumed), per_layer * 2 * layers), cudaSuccess);
    }
    cudaGraph_t g = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    for (int l = 0; l < layers; ++l) {
      ASSERT_EQ(engram_slot_wait_stream(o.gpu, slot, l, stream), ENGRAM_OK) << engram_last_error();
      ASSERT_EQ(engram_slot_output(o.gpu, slot, l, &out), ENGRAM_OK);
      ASSERT_EQ(cudaMemcpyAsync(consumed + per_layer * l, out.bf16, per_layer * 2, cudaMemcpyDeviceToDevice, stream),
                cudaSuccess);
      ASSERT_EQ(engram_slot_done_stream(o.gpu, slot, l, stream), ENGRAM_OK) << engram_last_error();
    }
    ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec[slot], g, 0), cudaSuccess);
    cudaGraphDestroy(g);
  }
  const auto& trace = test::BrownCompressed();
  std::vector<std::uint64_t> cs(kSeqs), gs(kSeqs);
  for (std::size_t b = 0; b < kSeqs; ++b) {
    ASSERT_EQ(engram_sequence_create(o.cpu, &cs[b]), ENGRAM_OK);
    ASSERT_EQ(engram_sequence_create(o.gpu, &gs[b]), ENGRAM_OK);
  }
  std::vector<std::uint16_t> got(per_layer * layers);
  for (std::size_t k = 0; k < 12; ++k) {
    std::vector<std::int32_t> toks(kSeqs);
    std::vector<engram_sequence_input> in_cpu, in_gpu;
    for (std::size_t b = 0; b < kSeqs; ++b) {
      toks[b] = trace[5000 + 1000 * b + k];
      in_cpu.push_back({cs[b], &toks[b], 1, nullptr});
      in_gpu.push_back({gs[b], &toks[b], 1, nullptr});
    }
    std::uint64_t sc = 0, sg = 0;
    std::uint32_t slot = 0;
    ASSERT_EQ(engram_step_submit(o.cpu, in_cpu.data(), kSeqs, &sc), ENGRAM_OK);
    ASSERT_EQ(engram_step_submit(o.gpu, in_gpu.data(), kSeqs, &sg), ENGRAM_OK);
    ASSERT_EQ(engram_step_slot(o.gpu, sg, &slot), ENGRAM_OK) << engram_last_error();
    ASSERT_EQ(slot, (sg - 1) % 2);
    ASSERT_EQ(cudaGraphLaunch(exec[slot], stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(got.data(), consumed, got.size() * 2, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    for (int l = 0; l < layers; ++l) {
      ASSERT_EQ(engram_step_wait(o.cpu, sc, l), ENGRAM_OK);
      engram_layer_output hc;
      hc.struct_size = sizeof(hc);
      ASSERT_EQ(engram_step_output(o.cpu, sc, l, &hc), ENGRAM_OK);
      EXPECT_EQ(std::memcmp(got.data() + per_layer * l, hc.bf16, per_layer * 2), 0) << "step " << k << " layer " << l;
    }
    ASSERT_EQ(engram_step_finish(o.cpu, sc), ENGRAM_OK);
    ASSERT_EQ(engram_step_finish(o.gpu, sg), ENGRAM_OK);
  }
  for (auto e : exec) cudaGraphExecDestroy(e);
  cudaFree(consumed);
  cudaStreamDestroy(stream);
}

TEST(CApiGpu, AskingForTheGpuBackendWithoutAGpuIsUnavailableElseItIsTaken) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = test::MakeIngestedStore("deepseek-v4.1-flash", 0.0001);
  f->version = {};
  f->store.reset();
  engram_store* s = nullptr;
  ASSERT_EQ(engram_store_open(f->dir.File("store").c_str(), nullptr, &s), ENGRAM_OK) << engram_last_error();
  engram_runtime_options opt;
  engram_runtime_options_init(&opt);
  opt.backend = ENGRAM_BACKEND_GPU;
  opt.hbm_cache_bytes = 1ULL << 20;
  opt.max_tokens = 64;
  engram_runtime* rt = nullptr;
  const engram_status st = engram_runtime_create(s, &opt, &rt);
  if (gpu::CurrentDevice().ok()) {
    EXPECT_EQ(st, ENGRAM_OK) << engram_last_error();
    EXPECT_EQ(engram_runtime_backend(rt), ENGRAM_BACKEND_GPU);
  } else {
    EXPECT_EQ(st, ENGRAM_UNAVAILABLE);
    EXPECT_NE(std::string(engram_last_error()).find("backend GPU"), std::string::npos) << engram_last_error();
  }
  engram_runtime_destroy(rt);
  engram_store_close(s);
}

}  // namespace
}  // namespace engram
