// Reading and writing safetensors checkpoints (https://github.com/huggingface/safetensors format):
// an 8-byte little-endian header length N, N bytes of JSON header, then the raw tensor bytes. Every
// header field is validated before use; errors name the file, the tensor and the field.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram/status.hpp"

namespace engram::store {

enum class DType : std::uint8_t {
  kF8E4M3,
  kF8E5M2,
  kF8E8M0,
  kF16,
  kBF16,
  kF32,
  kF64,
  kI8,
  kI16,
  kI32,
  kI64,
  kU8,
  kU16,
  kU32,
  kU64,
  kBool,
};

// The safetensors spelling: "F8_E4M3", "F8_E8M0", "BF16", "F32", ...
std::string_view DTypeName(DType dtype) noexcept;
Result<DType> ParseDType(std::string_view name);
std::uint32_t DTypeBytes(DType dtype) noexcept;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<std::uint64_t> shape;
  std::string file;          // the shard that holds it
  std::uint64_t offset = 0;  // absolute offset of its first byte in `file`
  std::uint64_t size = 0;    // bytes
};

// Largest header accepted (the format's own limit is 100 MB).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100ULL << 20;

// One .safetensors file: its validated header.
class SafetensorsFile {
 public:
  // Reads and validates the header. Errors (kCorruption, naming the file and the field): a file shorter
  // than 8 bytes, a header length past the end or above kMaxSafetensorsHeader, JSON that does not parse,
  // an entry without dtype/shape/data_offsets, an unknown dtype, a shape whose byte size differs from its
  // data_offsets, offsets past the end of the file (a truncated file), overlapping tensors.
  static Result<SafetensorsFile> Open(const std::string& path);

  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] std::uint64_t file_size() const noexcept { return file_size_; }
  [[nodiscard]] std::span<const TensorInfo> tensors() const noexcept { return tensors_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  // nullptr if the file has no tensor of that name.
  [[nodiscard]] const TensorInfo* Find(std::string_view name) const noexcept;

 private:
  std::string path_;
  std::uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: `model.safetensors.index.json` (its weight_map names each tensor's shard), or
// without an index every *.safetensors file in the directory.
class Checkpoint {
 public:
  static Result<Checkpoint> Open(const std::string& dir);

  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }
  [[nodiscard]] const std::vector<SafetensorsFile>& shards() const noexcept { return shards_; }
  // kNotFound naming the checkpoint and the tensor if no shard holds it.
  [[nodiscard]] Result<TensorInfo> Find(std::string_view name) const;

 private:
  std::string dir_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::size_t, std::less<>> index_;  // tensor name -> shard
};

// Reads `out.size()` bytes of a tensor starting `offset` bytes into it (pread, retrying short reads and
// EINTR). Errors name the file and the tensor.
Status ReadTensorBytes(const TensorInfo& tensor, std::uint64_t offset, std::span<std::byte> out);

struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<std::uint64_t> shape;
};

// Writes a safetensors file: the header from `tensors` (laid out back to back in the order given), then
// the tensors' bytes streamed through Append in that order. The file appears under its name only when
// Finish has checked that every byte was written (it is written as `path.tmp`, synced, renamed).
class SafetensorsWriter {
 public:
  static Result<SafetensorsWriter> Create(const std::string& path, const std::vector<TensorSpec>& tensors,
                                          const std::map<std::string, std::string>& metadata = {});
  SafetensorsWriter(SafetensorsWriter&& other) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&& other) noexcept;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();  // an unfinished file is removed

  [[nodiscard]] Status Append(std::span<const std::byte> bytes);
  [[nodiscard]] Status Finish();
  [[nodiscard]] std::uint64_t data_bytes() const noexcept { return total_; }

 private:
  SafetensorsWriter() = default;
  std::string path_;
  int fd_ = -1;
  std::uint64_t total_ = 0;
  std::uint64_t written_ = 0;
};

// Writes `model.safetensors.index.json` for shards already written: weight_map from each shard's tensors.
Status WriteSafetensorsIndex(const std::string& dir, const std::vector<std::string>& shard_files);

}  // namespace engram::store
