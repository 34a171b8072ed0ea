// engram from C++: the same library through its C++ API. Opens a store, serves one prefill of a
// sequence through the prefetcher (CPU backend) and prints each layer's first row id's bytes checksum.
//
//   engram_cpp_example STORE_DIR
#include <cstdio>
#include <engram/hasher.hpp>
#include <engram/prefetch/prefetcher.hpp>
#include <engram/store/store.hpp>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s STORE_DIR\n", argv[0]);
    return 2;
  }
  auto fail = [](const engram::Status& s) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  };
  auto store = engram::store::Store::Open(argv[1]);
  if (!store.ok()) return fail(store.status());
  auto latest = (*store)->Latest();
  if (!latest.ok()) return fail(latest.status());
  auto version = (*store)->Pin(*latest);
  if (!version.ok()) return fail(version.status());
  auto p = engram::prefetch::Prefetcher::Create(**store, std::move(*version), nullptr);
  if (!p.ok()) return fail(p.status());
  auto seq = (*p)->CreateSequence();
  if (!seq.ok()) return fail(seq.status());
  const engram::Layout& layout = (*store)->layout();
  std::vector<std::int32_t> tokens;
  for (std::int64_t i = 0; i < 8; ++i)
    tokens.push_back(static_cast<std::int32_t>((i * 7919 + 13) % layout.compressed_vocab_size()));
  const engram::prefetch::SequenceInput in{*seq, tokens, {}};
  auto step = (*p)->Submit(std::span(&in, 1));
  if (!step.ok()) return fail(step.status());
  for (int l = 0; l < layout.num_layers(); ++l) {
    if (auto s = (*p)->Wait(*step, l); !s.ok()) return fail(s);
    auto out = (*p)->Output(*step, l);
    if (!out.ok()) return fail(out.status());
    unsigned long long sum = 0;
    const auto bytes = static_cast<std::size_t>(out->tokens) * static_cast<std::size_t>(out->columns) * out->row_bytes;
    for (std::size_t i = 0; i < bytes; ++i) sum += static_cast<unsigned char>(out->rows[i]);
    std::printf("layer %d (model layer %d): %lld tokens, byte sum %llu\n", l, layout.layer(l).layer_id,
                static_cast<long long>(out->tokens), sum);
  }
  if (auto s = (*p)->Finish(*step); !s.ok()) return fail(s);
  std::printf("%s\n", (*p)->StatsJson().c_str());
  return 0;
}
