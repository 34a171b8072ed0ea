#include "engram/store/safetensors.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "../core/file.hpp"

namespace engram::store {
namespace {

using Json = nlohmann::json;

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  std::uint32_t bytes;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1}, {DType::kF8E8M0, "F8_E8M0", 1},
    {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},      {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},        {DType::kI8, "I8", 1},          {DType::kI16, "I16", 2},
    {DType::kI32, "I32", 4},        {DType::kI64, "I64", 8},        {DType::kU8, "U8", 1},
    {DType::kU16, "U16", 2},        {DType::kU32, "U32", 4},        {DType::kU64, "U64", 8},
    {DType::kBool, "BOOL", 1},
};

Status Corrupt(const std::string& path, std::string_view what) {
  return Status::Corruption(fmt::format("safetensors {}: {}", path, what));
}

Result<TensorInfo> ParseTensor(const std::string& path, const std::string& name, const Json& entry,
                               std::uint64_t data_start, std::uint64_t data_size) {
  const std::string where = fmt::format("tensor {}", name);
  if (!entry.is_object()) return Corrupt(path, where + ": entry is not an object");
  for (const auto& item : entry.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      return Corrupt(path, fmt::format("{}: unknown field {}", where, item.key()));
    }
  }
  TensorInfo t;
  t.name = name;
  t.file = path;
  auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) return Corrupt(path, where + ": field dtype: missing or not a string");
  auto parsed = ParseDType(dt->get<std::string>());
  if (!parsed.ok()) return Corrupt(path, fmt::format("{}: field dtype: {}", where, parsed.status().message()));
  t.dtype = *parsed;
  auto sh = entry.find("shape");
  if (sh == entry.end() || !sh->is_array()) return Corrupt(path, where + ": field shape: missing or not an array");
  std::uint64_t elements = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<std::int64_t>() >= 0)) {
      return Corrupt(path, fmt::format("{}: field shape: {} is not a non-negative integer", where, d.dump()));
    }
    const auto v = d.get<std::uint64_t>();
    if (v != 0 && elements > UINT64_MAX / v) return Corrupt(path, where + ": field shape: element count overflows");
    elements *= v;
    t.shape.push_back(v);
  }
  const std::uint64_t elem_bytes = DTypeBytes(t.dtype);
  if (elements > UINT64_MAX / elem_bytes) return Corrupt(path, where + ": field shape: byte size overflows");
  auto off = entry.find("data_offsets");
  if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return Corrupt(path, where + ": field data_offsets: expected [begin, end] of non-negative integers");
  }
  const auto begin = (*off)[0].get<std::uint64_t>();
  const auto end = (*off)[1].get<std::uint64_t>();
  if (begin > end) return Corrupt(path, fmt::format("{}: field data_offsets: begin {} > end {}", where, begin, end));
  if (end > data_size) {
    return Corrupt(path, fmt::format("{}: field data_offsets: end {} is past the end of the data ({} bytes; "
                                     "the file is truncated or the header is wrong)",
                                     where, end, data_size));
  }
  if (end - begin != elements * elem_bytes) {
    return Corrupt(path, fmt::format("{}: field shape: {} x {} is {} bytes but data_offsets span {}", where, elements,
                                     DTypeName(t.dtype), elements * elem_bytes, end - begin));
  }
  t.offset = data_start + begin;
  t.size = end - begin;
  return t;
}

}  // namespace

std::string_view DTypeName(DType dtype) noexcept {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

Result<DType> ParseDType(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return Status::InvalidArgument(fmt::format("unknown dtype \"{}\"", name));
}

std::uint32_t DTypeBytes(DType dtype) noexcept {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.bytes;
  }
  return 1;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(engram::detail::UniqueFd fd, engram::detail::OpenReadOnly(path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::IOError(fmt::format("stat {}: {}", path, std::strerror(errno)));
  SafetensorsFile f;
  f.path_ = path;
  f.file_size_ = static_cast<std::uint64_t>(st.st_size);
  if (f.file_size_ < 8)
    return Corrupt(path, fmt::format("{} bytes is too short for the 8-byte header length", f.file_size_));
  std::uint64_t header_len = 0;
  ENGRAM_RETURN_IF_ERROR(
      engram::detail::PreadExact(fd.get(), path, 0, std::as_writable_bytes(std::span(&header_len, 1))));
  if (header_len > kMaxSafetensorsHeader) {
    return Corrupt(path, fmt::format("header length {} exceeds the {} byte limit", header_len, kMaxSafetensorsHeader));
  }
  if (header_len > f.file_size_ - 8) {
    return Corrupt(path,
                   fmt::format("header length {} runs past the end of the {}-byte file", header_len, f.file_size_));
  }
  std::string header(header_len, '\0');
  ENGRAM_RETURN_IF_ERROR(engram::detail::PreadExact(fd.get(), path, 8, std::as_writable_bytes(std::span(header))));
  Json root;
  try {
    root = Json::parse(header);
  } catch (const Json::exception& e) {
    return Corrupt(path, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!root.is_object()) return Corrupt(path, "header is not a JSON object");
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = f.file_size_ - data_start;
  for (const auto& item : root.items()) {
    if (item.key() == "__metadata__") {
      if (!item.value().is_object()) return Corrupt(path, "field __metadata__: not an object");
      for (const auto& m : item.value().items()) {
        if (!m.value().is_string()) return Corrupt(path, fmt::format("field __metadata__.{}: not a string", m.key()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ENGRAM_ASSIGN_OR_RETURN(TensorInfo t, ParseTensor(path, item.key(), item.value(), data_start, data_size));
    f.tensors_.push_back(std::move(t));
  }
  // Tensors must not overlap (the format lays them out back to back).
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(f.tensors_.size());
  for (const auto& t : f.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    if (a.size > 0 && by_offset[i]->size > 0 && a.offset + a.size > by_offset[i]->offset) {
      return Corrupt(path, fmt::format("tensors {} and {} overlap", a.name, by_offset[i]->name));
    }
  }
  return f;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const noexcept {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<Checkpoint> Checkpoint::Open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::vector<std::string> files;
  auto index_text = detail::ReadFileToString(index_path);
  std::map<std::string, std::string> weight_map;
  if (index_text.ok()) {
    Json root;
    try {
      root = Json::parse(*index_text);
    } catch (const Json::exception& e) {
      return Status::Corruption(fmt::format("{}: not valid JSON: {}", index_path, e.what()));
    }
    auto wm = root.find("weight_map");
    if (!root.is_object() || wm == root.end() || !wm->is_object()) {
      return Status::Corruption(fmt::format("{}: field weight_map: missing or not an object", index_path));
    }
    for (const auto& item : wm->items()) {
      if (!item.value().is_string()) {
        return Status::Corruption(fmt::format("{}: field weight_map.{}: not a string", index_path, item.key()));
      }
      const std::string file = item.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "." || file == "..") {
        return Status::Corruption(
            fmt::format("{}: field weight_map.{}: \"{}\" is not a file name in the checkpoint directory", index_path,
                        item.key(), file));
      }
      weight_map[item.key()] = file;
      if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    }
  } else if (index_text.status().code() == StatusCode::kNotFound) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Status::NotFound(fmt::format("checkpoint {}: {}", dir, std::strerror(errno)));
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 12 && name.ends_with(".safetensors")) files.push_back(name);
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
    if (files.empty()) return Status::NotFound(fmt::format("checkpoint {}: no *.safetensors file and no index", dir));
  } else {
    return index_text.status();
  }
  for (const std::string& file : files) {
    ENGRAM_ASSIGN_OR_RETURN(SafetensorsFile shard, SafetensorsFile::Open(fmt::format("{}/{}", dir, file)));
    const std::size_t k = c.shards_.size();
    for (const auto& t : shard.tensors()) {
      auto wm = weight_map.find(t.name);
      if (!weight_map.empty() && (wm == weight_map.end() || wm->second != file)) continue;  // the index decides
      if (!c.index_.emplace(t.name, k).second) {
        return Status::Corruption(fmt::format("checkpoint {}: tensor {} appears in more than one shard", dir, t.name));
      }
    }
    c.shards_.push_back(std::move(shard));
  }
  for (const auto& [name, file] : weight_map) {
    if (!c.index_.contains(name)) {
      return Status::Corruption(
          fmt::format("checkpoint {}: the index puts tensor {} in {}, which does not hold it", dir, name, file));
    }
  }
  return c;
}

Result<TensorInfo> Checkpoint::Find(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return Status::NotFound(fmt::format("checkpoint {} has no tensor {}", dir_, name));
  return *shards_[it->second].Find(name);
}

Status ReadTensorBytes(const TensorInfo& tensor, std::uint64_t offset, std::span<std::byte> out) {
  if (offset > tensor.size || out.size() > tensor.size - offset) {
    return Status::OutOfRange(fmt::format("tensor {} in {}: bytes [{}, {}) are outside its {} bytes", tensor.name,
                                          tensor.file, offset, offset + out.size(), tensor.size));
  }
  ENGRAM_ASSIGN_OR_RETURN(engram::detail::UniqueFd fd, engram::detail::OpenReadOnly(tensor.file));
  return engram::detail::PreadExact(fd.get(), tensor.file, tensor.offset + offset, out)
      .WithContext(fmt::format("tensor {}", tensor.name));
}

Result<SafetensorsWriter> SafetensorsWriter::Create(const std::string& path, const std::vector<TensorSpec>& tensors,
                                                    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    std::uint64_t bytes = DTypeBytes(t.dtype);
    for (std::uint64_t d : t.shape) bytes *= d;
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference writer does
  SafetensorsWriter w;
  w.path_ = path;
  w.total_ = offset;
  w.fd_ = ::open((path + ".tmp").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd_ < 0) return Status::IOError(fmt::format("create {}.tmp: {}", path, std::strerror(errno)));
  const std::uint64_t len = text.size();
  ENGRAM_RETURN_IF_ERROR(w.Append(std::as_bytes(std::span(&len, 1))));
  ENGRAM_RETURN_IF_ERROR(w.Append(std::as_bytes(std::span(text))));
  w.written_ = 0;  // count tensor bytes only
  return w;
}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&& o) noexcept {
  *this = std::move(o);
}

SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    total_ = o.total_;
    written_ = o.written_;
  }
  return *this;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink((path_ + ".tmp").c_str());
  }
}

Status SafetensorsWriter::Append(std::span<const std::byte> bytes) {
  if (fd_ < 0) return Status::FailedPrecondition(fmt::format("{}: writer is finished", path_));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError(fmt::format("write {}.tmp: {}", path_, std::strerror(errno)));
    }
    done += static_cast<std::size_t>(n);
  }
  written_ += bytes.size();
  return Status::Ok();
}

Status SafetensorsWriter::Finish() {
  if (fd_ < 0) return Status::FailedPrecondition(fmt::format("{}: writer is finished", path_));
  if (written_ != total_) {
    return Status::FailedPrecondition(
        fmt::format("{}: {} tensor bytes written, the header declares {}", path_, written_, total_));
  }
  if (::fsync(fd_) != 0) return Status::IOError(fmt::format("fsync {}.tmp: {}", path_, std::strerror(errno)));
  ::close(std::exchange(fd_, -1));
  if (::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0) {
    return Status::IOError(fmt::format("rename {}.tmp: {}", path_, std::strerror(errno)));
  }
  return Status::Ok();
}

Status WriteSafetensorsIndex(const std::string& dir, const std::vector<std::string>& shard_files) {
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::uint64_t total = 0;
  for (const std::string& file : shard_files) {
    ENGRAM_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(fmt::format("{}/{}", dir, file)));
    for (const auto& t : f.tensors()) {
      weight_map[t.name] = file;
      total += t.size;
    }
  }
  nlohmann::ordered_json root;
  root["metadata"] = {{"total_size", total}};
  root["weight_map"] = std::move(weight_map);
  const std::string text = root.dump(2) + "\n";
  return detail::WriteFile(dir + "/model.safetensors.index.json", std::as_bytes(std::span(text)));
}

}  // namespace engram::store
