#include "engram/store/store.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "../core/progress.hpp"
#include "../core/thread_pool.hpp"
#include "direct_blocks.hpp"
#include "engram/log.hpp"
#include "io_uring_fs.hpp"
#include "store_format.hpp"

namespace engram::store {

namespace fs = std::filesystem;
using detail::GenerationRecord;
using detail::Manifest;

namespace {

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  StatusCode code = StatusCode::kIOError;
  if (s.IsCorruption()) code = StatusCode::kCorruption;
  if (s.IsNotFound()) code = StatusCode::kNotFound;
  if (s.IsInvalidArgument()) code = StatusCode::kInvalidArgument;
  if (s.IsNoSpace()) code = StatusCode::kResourceExhausted;
  return {code, fmt::format("{}: {}", what, s.ToString())};
}

std::int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The first difference between two layouts in anything that changes row ids or row bytes ("" if none).
std::string LayoutDifference(const Layout& stored, const Layout& given) {
  const LayoutSpec& a = stored.spec();
  const LayoutSpec& b = given.spec();
  if (a.max_ngram != b.max_ngram) return fmt::format("max_ngram {} vs {}", a.max_ngram, b.max_ngram);
  if (a.heads != b.heads) return fmt::format("heads {} vs {}", a.heads, b.heads);
  if (a.compressed_vocab_size != b.compressed_vocab_size) {
    return fmt::format("compressed_vocab_size {} vs {}", a.compressed_vocab_size, b.compressed_vocab_size);
  }
  if (a.pad_id != b.pad_id) return fmt::format("pad_id {} vs {}", a.pad_id, b.pad_id);
  if (a.row_format != b.row_format || a.row_dim != b.row_dim) {
    return fmt::format("row {} x {} vs {} x {}", RowFormatName(a.row_format), a.row_dim, RowFormatName(b.row_format),
                       b.row_dim);
  }
  if (a.layers.size() != b.layers.size()) return fmt::format("{} layers vs {}", a.layers.size(), b.layers.size());
  for (std::size_t i = 0; i < a.layers.size(); ++i) {
    if (a.layers[i].layer_id != b.layers[i].layer_id) {
      return fmt::format("layers[{}].layer_id {} vs {}", i, a.layers[i].layer_id, b.layers[i].layer_id);
    }
    if (a.layers[i].primes != b.layers[i].primes) return fmt::format("layers[{}].primes differ", i);
    if (a.layers[i].multipliers != b.layers[i].multipliers) return fmt::format("layers[{}].multipliers differ", i);
  }
  return "";
}

std::uint32_t DefaultRowsPerKey(std::uint32_t row_bytes) {
  // One page per 4 KiB aligned block: value + key + block entry header, restart array and trailer.
  constexpr std::uint32_t kBlockPayload = 4096 - 64;
  return std::max<std::uint32_t>(1, kBlockPayload / row_bytes);
}

}  // namespace

// ---- shared state ----------------------------------------------------------------------------------

// The database and everything it uses. Members are destroyed in reverse order, so the DB closes before
// its Env and FileSystem go, even when a VersionHandle outlives the Store.
struct DbHolder {
  std::shared_ptr<IoUringFileSystem> uring_fs;  // null in kPosix mode
  std::unique_ptr<rocksdb::Env> uring_env;
  std::shared_ptr<rocksdb::Cache> block_cache;
  std::unique_ptr<rocksdb::DB> db;
  std::mutex cf_mu;  // guards creating/dropping column families
};

// One generation's column family. Dropped from the database when the last user lets go of it after a
// DropVersion made it unreferenced.
struct GenerationData {
  std::shared_ptr<DbHolder> holder;
  rocksdb::ColumnFamilyHandle* cf = nullptr;
  std::uint64_t id = 0;
  std::atomic<bool> drop_when_unused{false};
  // Built on the first direct read (ReadPath::kDirectBlocks); closed before the column family goes.
  std::mutex direct_mu;
  std::unique_ptr<detail::DirectBlockReader> direct;

  GenerationData(std::shared_ptr<DbHolder> h, rocksdb::ColumnFamilyHandle* c, std::uint64_t i)
      : holder(std::move(h)), cf(c), id(i) {}
  GenerationData(const GenerationData&) = delete;
  GenerationData& operator=(const GenerationData&) = delete;
  ~GenerationData() {
    direct.reset();
    std::lock_guard<std::mutex> lock(holder->cf_mu);
    if (drop_when_unused.load()) {
      rocksdb::Status s = holder->db->DropColumnFamily(cf);
      if (!s.ok()) Log(LogLevel::kWarn, "dropping generation {}: {}", id, s.ToString());
    }
    holder->db->DestroyColumnFamilyHandle(cf).PermitUncheckedError();
  }
};

// For a version: which rows it reads from the edits column family, and from which version's edit.
using EditOverlay = std::unordered_map<std::uint64_t, VersionId>;  // (layer << 56 | row) -> edit version

struct VersionHandle::State {
  VersionId id = 0;
  std::shared_ptr<GenerationData> generation;
  std::shared_ptr<const EditOverlay> overlay;
  std::shared_ptr<DbHolder> holder;
  rocksdb::ColumnFamilyHandle* edits_cf = nullptr;
};

VersionId VersionHandle::id() const noexcept {
  return state_ ? state_->id : 0;
}

struct Store::Impl {
  std::string dir;
  StoreOptions options;
  std::optional<Layout> layout;
  std::optional<TokenMap> token_map;
  std::shared_ptr<DbHolder> holder = std::make_shared<DbHolder>();
  std::uint32_t rows_per_key = 0;  // fixed at creation; read without the lock
  std::shared_ptr<detail::DirectBlockStats> direct_stats = std::make_shared<detail::DirectBlockStats>();
  rocksdb::ColumnFamilyHandle* edits_cf = nullptr;
  std::unique_ptr<engram::detail::ThreadPool> pool;

  mutable std::mutex mu;  // guards everything below
  Manifest manifest;
  std::map<std::uint64_t, std::shared_ptr<GenerationData>> generations;
  std::map<VersionId, std::shared_ptr<const VersionHandle::State>> version_states;
  // Every edited row: (layer << 56 | row) -> versions that edited it.
  std::unordered_map<std::uint64_t, std::vector<VersionId>> edit_index;
  std::mutex write_mu;  // one writer (ingest, edit, drop) at a time

  ~Impl() {
    version_states.clear();
    generations.clear();
    if (holder && holder->db) {
      if (edits_cf != nullptr) holder->db->DestroyColumnFamilyHandle(edits_cf).PermitUncheckedError();
      edits_cf = nullptr;
    }
  }

  rocksdb::ColumnFamilyOptions GenerationOptions() const {
    rocksdb::ColumnFamilyOptions cf;
    cf.compression = rocksdb::kNoCompression;
    cf.bottommost_compression = rocksdb::kNoCompression;
    cf.disable_auto_compactions = true;  // immutable rows, bulk-loaded into the bottom level
    rocksdb::BlockBasedTableOptions t;
    t.block_size = 4096;
    t.block_align = true;  // each data block starts on a 4 KiB boundary: one aligned read per block
    t.checksum = rocksdb::kXXH3;
    t.format_version = 5;
    t.index_type = rocksdb::BlockBasedTableOptions::kBinarySearch;
    t.cache_index_and_filter_blocks = false;  // index blocks live with the (always open) table readers
    t.filter_policy = nullptr;                // every key exists: a filter would only cost memory
    if (holder->block_cache) {
      t.block_cache = holder->block_cache;
    } else {
      t.no_block_cache = true;
    }
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    return cf;
  }

  rocksdb::ColumnFamilyOptions MetaOptions() const {
    rocksdb::ColumnFamilyOptions cf;
    cf.compression = rocksdb::kNoCompression;
    rocksdb::BlockBasedTableOptions t;
    t.checksum = rocksdb::kXXH3;
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    return cf;
  }

  rocksdb::DBOptions DbOptions() const {
    rocksdb::DBOptions o;
    o.use_direct_reads = true;
    o.max_open_files = -1;  // keep every table reader (and its index) open
    o.info_log_level = rocksdb::WARN_LEVEL;
    o.keep_log_file_num = 2;
    if (holder->uring_fs) o.env = holder->uring_env.get();
    return o;
  }

  Status PersistManifest(const Manifest& m) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return FromRocks(holder->db->Put(wo, detail::kManifestKey, detail::EncodeManifest(m)),
                     fmt::format("store {}: write manifest", dir));
  }

  const VersionInfo* FindVersion(VersionId id) const {
    for (const auto& v : manifest.versions) {
      if (v.id == id) return &v;
    }
    return nullptr;
  }

  // Builds the read state of a version (mu held).
  Result<std::shared_ptr<const VersionHandle::State>> BuildState(VersionId id) {
    const VersionInfo* v = FindVersion(id);
    if (v == nullptr) return Status::NotFound(fmt::format("store {} has no version {}", dir, id));
    auto gen = generations.find(v->generation);
    if (gen == generations.end()) {
      return Status::Corruption(
          fmt::format("store {}: version {} needs generation {}, which is missing", dir, id, v->generation));
    }
    // The chain of versions from `id` back to its ingest; the newest edit of each row in it wins.
    std::vector<VersionId> chain;
    for (const VersionInfo* c = v; c != nullptr; c = c->parent ? FindVersion(c->parent) : nullptr)
      chain.push_back(c->id);
    auto overlay = std::make_shared<EditOverlay>();
    for (const auto& [key, versions] : edit_index) {
      VersionId best = 0;
      for (VersionId e : versions) {
        if (e > best && std::find(chain.begin(), chain.end(), e) != chain.end()) best = e;
      }
      if (best != 0) (*overlay)[key] = best;
    }
    auto st = std::make_shared<VersionHandle::State>();
    st->id = id;
    st->generation = gen->second;
    st->overlay = std::move(overlay);
    st->holder = holder;
    st->edits_cf = edits_cf;
    return std::shared_ptr<const VersionHandle::State>(std::move(st));
  }

  Status ValidateCheckpoint(const Checkpoint& ck, const IngestOptions& io, std::vector<std::vector<TensorInfo>>& out) {
    for (int li = 0; li < layout->num_layers(); ++li) {
      std::vector<TensorInfo> infos;
      for (const TensorSpec& want : LayerTensors(*layout, li, io.naming)) {
        ENGRAM_ASSIGN_OR_RETURN(TensorInfo t, ck.Find(want.name));
        if (t.dtype != want.dtype) {
          return Status::InvalidArgument(
              fmt::format("checkpoint {}: tensor {} in {}: field dtype: {} but layout \"{}\" needs {}", ck.dir(),
                          t.name, t.file, DTypeName(t.dtype), layout->name(), DTypeName(want.dtype)));
        }
        if (t.shape != want.shape) {
          return Status::InvalidArgument(
              fmt::format("checkpoint {}: tensor {} in {}: field shape: [{}] but layout \"{}\" needs [{}]", ck.dir(),
                          t.name, t.file, fmt::join(t.shape, ", "), layout->name(), fmt::join(want.shape, ", ")));
        }
        infos.push_back(std::move(t));
      }
      out.push_back(std::move(infos));
    }
    return Status::Ok();
  }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

namespace {

Status MakeIo(Store::Impl& impl) {
  if (impl.options.io == IoMode::kIoUring) {
    ENGRAM_ASSIGN_OR_RETURN(impl.holder->uring_fs, IoUringFileSystem::Create(rocksdb::FileSystem::Default()));
    impl.holder->uring_env = rocksdb::NewCompositeEnv(impl.holder->uring_fs);
  }
  if (impl.options.block_cache_bytes > 0) {
    impl.holder->block_cache = rocksdb::NewLRUCache(impl.options.block_cache_bytes);
  }
  impl.pool =
      std::make_unique<engram::detail::ThreadPool>(impl.options.read_threads > 1 ? impl.options.read_threads - 1 : 0);
  return Status::Ok();
}

Status OpenDb(Store::Impl& impl, bool create) {
  rocksdb::DBOptions dbo = impl.DbOptions();
  dbo.create_if_missing = create;
  dbo.error_if_exists = create;
  dbo.create_missing_column_families = create;
  std::vector<std::string> names;
  if (create) {
    names = {rocksdb::kDefaultColumnFamilyName, detail::kEditsCf};
  } else {
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(dbo, impl.dir, &names);
    if (!s.ok()) {
      if (!fs::exists(impl.dir + "/CURRENT"))
        return Status::NotFound(fmt::format("{} is not an engram store (no CURRENT file)", impl.dir));
      return FromRocks(s, fmt::format("store {}: list column families", impl.dir));
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  descs.reserve(names.size());
  for (const auto& n : names) {
    descs.emplace_back(n, n.starts_with("g") ? impl.GenerationOptions() : impl.MetaOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(dbo, impl.dir, descs, &handles, &raw);
  if (!s.ok()) {
    if (s.ToString().find("lock") != std::string::npos) {
      return Status::FailedPrecondition(
          fmt::format("store {} is open in another process (RocksDB LOCK held): {}", impl.dir, s.ToString()));
    }
    if (s.ToString().find("exists") != std::string::npos && create) {
      return Status::FailedPrecondition(fmt::format("store {} already exists", impl.dir));
    }
    return FromRocks(s, fmt::format("open store {}", impl.dir));
  }
  impl.holder->db.reset(raw);
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i] == rocksdb::kDefaultColumnFamilyName) {
      // The default family's handle is owned by the DB.
      impl.holder->db->DestroyColumnFamilyHandle(handles[i]).PermitUncheckedError();
    } else if (names[i] == detail::kEditsCf) {
      impl.edits_cf = handles[i];
    } else {
      const std::uint64_t id = std::stoull(names[i].substr(1));
      impl.generations[id] = std::make_shared<GenerationData>(impl.holder, handles[i], id);
    }
  }
  if (impl.edits_cf == nullptr) return Status::Corruption(fmt::format("store {}: no edits column family", impl.dir));
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Create(const std::string& dir, const Layout& layout, const TokenMap* token_map,
                                             const StoreOptions& options) {
  if (fs::exists(dir + "/CURRENT")) return Status::FailedPrecondition(fmt::format("store {} already exists", dir));
  if (token_map != nullptr) ENGRAM_RETURN_IF_ERROR(token_map->CheckCompatible(layout));
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  impl->layout = layout;
  if (token_map != nullptr) impl->token_map = *token_map;
  ENGRAM_RETURN_IF_ERROR(MakeIo(*impl));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError(fmt::format("create {}: {}", dir, ec.message()));
  ENGRAM_RETURN_IF_ERROR(OpenDb(*impl, true));
  impl->manifest.row_bytes = layout.row_bytes();
  impl->manifest.rows_per_key =
      options.rows_per_key != 0 ? options.rows_per_key : DefaultRowsPerKey(layout.row_bytes());
  impl->rows_per_key = impl->manifest.rows_per_key;
  rocksdb::WriteBatch batch;
  batch.Put(detail::kFormatKey, std::to_string(detail::kStoreFormat)).PermitUncheckedError();
  batch.Put(detail::kLayoutKey, layout.ToJson()).PermitUncheckedError();
  if (token_map != nullptr) {
    const auto ids = token_map->ids();
    batch.Put(detail::kTokenMapKey, rocksdb::Slice(reinterpret_cast<const char*>(ids.data()), ids.size_bytes()))
        .PermitUncheckedError();
  }
  batch.Put(detail::kManifestKey, detail::EncodeManifest(impl->manifest)).PermitUncheckedError();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ENGRAM_RETURN_IF_ERROR(FromRocks(impl->holder->db->Write(wo, &batch), fmt::format("store {}: write metadata", dir)));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Result<std::unique_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& options,
                                           const Layout* expected) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  ENGRAM_RETURN_IF_ERROR(MakeIo(*impl));
  ENGRAM_RETURN_IF_ERROR(OpenDb(*impl, false));
  rocksdb::DB& db = *impl->holder->db;
  std::string value;
  ENGRAM_RETURN_IF_ERROR(FromRocks(db.Get({}, detail::kLayoutKey, &value), fmt::format("store {}: read layout", dir)));
  ENGRAM_ASSIGN_OR_RETURN(Layout stored, Layout::FromJson(value, dir + " (stored layout)"));
  if (expected != nullptr) {
    const std::string diff = LayoutDifference(stored, *expected);
    if (!diff.empty()) {
      return Status::InvalidArgument(fmt::format("store {} holds layout \"{}\", which does not match layout \"{}\": {}",
                                                 dir, stored.name(), expected->name(), diff));
    }
  }
  impl->layout = std::move(stored);
  rocksdb::Status s = db.Get({}, detail::kTokenMapKey, &value);
  if (s.ok()) {
    std::vector<std::int32_t> ids(value.size() / 4);
    std::memcpy(ids.data(), value.data(), ids.size() * 4);
    ENGRAM_ASSIGN_OR_RETURN(TokenMap m, TokenMap::FromIds(std::move(ids), dir + " (stored token map)"));
    impl->token_map = std::move(m);
  } else if (!s.IsNotFound()) {
    return FromRocks(s, fmt::format("store {}: read token map", dir));
  }
  ENGRAM_RETURN_IF_ERROR(
      FromRocks(db.Get({}, detail::kManifestKey, &value), fmt::format("store {}: read manifest", dir)));
  ENGRAM_ASSIGN_OR_RETURN(impl->manifest, detail::DecodeManifest(value).WithContext(fmt::format("store {}", dir)));
  impl->rows_per_key = impl->manifest.rows_per_key;
  if (impl->manifest.row_bytes != impl->layout->row_bytes()) {
    return Status::Corruption(fmt::format("store {}: manifest row_bytes {} but the layout's rows are {} bytes", dir,
                                          impl->manifest.row_bytes, impl->layout->row_bytes()));
  }
  // Generations no version references are what a crashed or failed ingest left behind: drop them.
  for (auto it = impl->generations.begin(); it != impl->generations.end();) {
    const bool used = std::any_of(impl->manifest.versions.begin(), impl->manifest.versions.end(),
                                  [&](const VersionInfo& v) { return v.generation == it->first; });
    if (!used) {
      Log(LogLevel::kWarn, "store {}: dropping generation {} that no version references (an interrupted ingest)", dir,
          it->first);
      it->second->drop_when_unused = true;
      it = impl->generations.erase(it);
    } else {
      ++it;
    }
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename().string().starts_with("ingest-tmp-")) fs::remove_all(e.path(), ec);
  }
  // The edit index; edits of versions that no longer exist (dropped, or a crashed edit) are deleted.
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator({}, impl->edits_cf));
  rocksdb::WriteBatch stale;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    int layer = 0;
    std::uint64_t row = 0;
    VersionId version = 0;
    const std::string key = it->key().ToString();
    if (!detail::DecodeEditKey(key, layer, row, version)) {
      return Status::Corruption(fmt::format("store {}: malformed edit key of {} bytes", dir, key.size()));
    }
    if (impl->FindVersion(version) == nullptr) {
      stale.Delete(impl->edits_cf, key).PermitUncheckedError();
      continue;
    }
    impl->edit_index[(static_cast<std::uint64_t>(layer) << 56) | row].push_back(version);
  }
  ENGRAM_RETURN_IF_ERROR(FromRocks(it->status(), fmt::format("store {}: scan edits", dir)));
  it.reset();
  if (stale.Count() > 0) {
    ENGRAM_RETURN_IF_ERROR(FromRocks(db.Write({}, &stale), fmt::format("store {}: delete stale edits", dir)));
  }
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

const Layout& Store::layout() const noexcept {
  return *impl_->layout;
}

const TokenMap* Store::token_map() const noexcept {
  return impl_->token_map ? &*impl_->token_map : nullptr;
}

std::vector<VersionInfo> Store::versions() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->manifest.versions;
}

Result<VersionId> Store::Latest() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->manifest.versions.empty()) return Status::NotFound(fmt::format("store {} has no version yet", impl_->dir));
  return impl_->manifest.versions.back().id;
}

std::vector<TensorChecksum> Store::tensor_checksums(VersionId version) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const VersionInfo* v = impl_->FindVersion(version);
  if (v == nullptr) return {};
  for (const auto& g : impl_->manifest.generations) {
    if (g.id == v->generation) return g.tensors;
  }
  return {};
}

StoreInfo Store::Info() const {
  StoreInfo info;
  info.dir = impl_->dir;
  std::lock_guard<std::mutex> lock(impl_->mu);
  info.rows_per_key = impl_->manifest.rows_per_key;
  info.versions = impl_->manifest.versions;
  info.last_verification = impl_->manifest.last_verification;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(impl_->dir, ec)) {
    if (e.path().extension() == ".sst") info.bytes_on_disk += e.file_size(ec);
  }
  return info;
}

StoreIoStats Store::io_stats() const {
  StoreIoStats s;
  s.direct_reads = impl_->direct_stats->reads.load();
  s.direct_submissions = impl_->direct_stats->submissions.load();
  s.direct_bytes = impl_->direct_stats->bytes.load();
  const detail::QueueDepthGauge& dd = impl_->direct_stats->depth;
  std::uint64_t depth_sum = dd.depth_sum.load();
  s.in_flight = static_cast<std::uint64_t>(std::max<std::int64_t>(dd.in_flight.load(), 0));
  s.peak_in_flight = dd.peak.load();
  auto mean = [&] {
    const std::uint64_t subs = s.submissions + s.direct_submissions;
    return subs > 0 ? static_cast<double>(depth_sum) / static_cast<double>(subs) : 0.0;
  };
  if (!impl_->holder->uring_fs) {
    s.mean_queue_depth = mean();
    return s;
  }
  const IoUringStats& u = impl_->holder->uring_fs->stats();
  depth_sum += u.depth.depth_sum.load();
  s.in_flight += static_cast<std::uint64_t>(std::max<std::int64_t>(u.depth.in_flight.load(), 0));
  s.peak_in_flight = std::max(s.peak_in_flight, u.depth.peak.load());
  s.io_uring = true;
  s.multireads = u.multireads.load();
  s.submissions = u.submissions.load();
  s.reads = u.reads.load();
  s.resubmits = u.resubmits.load();
  s.bytes = u.bytes.load();
  s.mean_queue_depth = mean();
  return s;
}

Result<VersionId> Store::Ingest(const Checkpoint& checkpoint, const IngestOptions& options) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> write_lock(im.write_mu);
  const Layout& layout = *im.layout;
  std::vector<std::vector<TensorInfo>> tensors;
  ENGRAM_RETURN_IF_ERROR(im.ValidateCheckpoint(checkpoint, options, tensors));

  std::uint64_t gen_id = 0;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    gen_id = im.manifest.next_generation;
  }
  const std::string tmp = fmt::format("{}/ingest-tmp-g{}", im.dir, gen_id);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Status::IOError(fmt::format("create {}: {}", tmp, ec.message()));
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(path, e);
    }
  } cleanup{tmp};

  rocksdb::ColumnFamilyHandle* cf = nullptr;
  {
    std::lock_guard<std::mutex> lock(im.holder->cf_mu);
    ENGRAM_RETURN_IF_ERROR(
        FromRocks(im.holder->db->CreateColumnFamily(im.GenerationOptions(), detail::GenerationCf(gen_id), &cf),
                  fmt::format("store {}: create generation {}", im.dir, gen_id)));
  }
  // Until published, a failure drops the half-built generation (a crash leaves it for Open to drop).
  auto generation = std::make_shared<GenerationData>(im.holder, cf, gen_id);
  generation->drop_when_unused = true;

  const std::uint32_t rpk = im.rows_per_key;
  const std::uint32_t row_bytes = layout.row_bytes();
  const bool fp8 = layout.row_format() == RowFormat::kFp8E4M3E8M0;
  const auto dim = static_cast<std::size_t>(layout.spec().row_dim);
  std::uint64_t total_bytes = 0;
  for (const auto& ts : tensors) {
    for (const auto& t : ts) total_bytes += t.size;
  }
  engram::detail::Progress progress("ingest " + checkpoint.dir(), total_bytes, !im.options.progress);

  rocksdb::EnvOptions env_options;
  const rocksdb::Options sst_options(im.DbOptions(), im.GenerationOptions());
  // Tensor checksums are XXH3 trees: XXH3 of the XXH3 digests of consecutive chunks of chunk_rows rows,
  // so that chunks can be hashed by different threads (docs/store.md).
  const std::uint64_t chunk_rows = static_cast<std::uint64_t>(rpk) * 4096;  // ~16 MiB of 264 B rows
  const std::uint64_t unit_chunks = std::max<std::uint64_t>(1, im.options.ingest_file_bytes / (chunk_rows * row_bytes));
  // Units of work: whole chunks of one layer, about ingest_file_bytes each; each writes one SST file.
  struct Unit {
    int layer;
    std::uint64_t first_chunk;
    std::uint64_t chunks;
    std::string file;
  };
  std::vector<Unit> units;
  std::vector<std::vector<std::vector<std::uint64_t>>> digests(static_cast<std::size_t>(layout.num_layers()));
  for (int li = 0; li < layout.num_layers(); ++li) {
    const auto rows = static_cast<std::uint64_t>(layout.layer_rows(li));
    const std::uint64_t nchunks = (rows + chunk_rows - 1) / chunk_rows;
    digests[static_cast<std::size_t>(li)].assign(tensors[static_cast<std::size_t>(li)].size(),
                                                 std::vector<std::uint64_t>(nchunks));
    for (std::uint64_t c = 0; c < nchunks; c += unit_chunks) {
      units.push_back({li, c, std::min(unit_chunks, nchunks - c), fmt::format("{}/{:06d}.sst", tmp, units.size())});
    }
  }
  auto write_unit = [&](const Unit& u) -> Status {
    const auto& ts = tensors[static_cast<std::size_t>(u.layer)];
    auto& dg = digests[static_cast<std::size_t>(u.layer)];
    const auto rows = static_cast<std::uint64_t>(layout.layer_rows(u.layer));
    const std::size_t wbytes = fp8 ? dim : row_bytes;
    rocksdb::SstFileWriter writer(env_options, sst_options, cf);
    ENGRAM_RETURN_IF_ERROR(FromRocks(writer.Open(u.file), fmt::format("open {}", u.file)));
    std::vector<std::byte> weight;
    std::vector<std::byte> scale;
    std::string value;
    for (std::uint64_t c = u.first_chunk; c < u.first_chunk + u.chunks; ++c) {
      const std::uint64_t r0 = c * chunk_rows;
      const std::uint64_t n = std::min(chunk_rows, rows - r0);
      weight.resize(n * wbytes);
      ENGRAM_RETURN_IF_ERROR(ReadTensorBytes(ts[0], r0 * wbytes, weight).WithContext("ingest"));
      dg[0][c] = XXH3_64bits(weight.data(), weight.size());
      if (fp8) {
        scale.resize(n * (dim / 32));
        ENGRAM_RETURN_IF_ERROR(ReadTensorBytes(ts[1], r0 * (dim / 32), scale).WithContext("ingest"));
        dg[1][c] = XXH3_64bits(scale.data(), scale.size());
      }
      for (std::uint64_t p0 = 0; p0 < n; p0 += rpk) {
        const std::uint64_t m = std::min<std::uint64_t>(rpk, n - p0);
        value.resize(m * row_bytes);
        for (std::uint64_t r = 0; r < m; ++r) {
          char* dst = value.data() + r * row_bytes;
          std::memcpy(dst, weight.data() + (p0 + r) * wbytes, wbytes);
          if (fp8) std::memcpy(dst + dim, scale.data() + (p0 + r) * (dim / 32), dim / 32);
        }
        ENGRAM_RETURN_IF_ERROR(
            FromRocks(writer.Put(detail::PageKey(u.layer, (r0 + p0) / rpk), value), fmt::format("write {}", u.file)));
      }
      progress.Add(weight.size() + scale.size());
    }
    return FromRocks(writer.Finish(), fmt::format("finish {}", u.file));
  };
  // Units run in parallel: one thread's reads overlap the others' packing and writing.
  std::vector<Status> unit_status(units.size());
  std::atomic<bool> failed{false};
  {
    engram::detail::ThreadPool pool(std::max<std::uint32_t>(1, im.options.ingest_threads) - 1);
    pool.ParallelFor(units.size(), [&](std::size_t i) {
      if (failed.load()) return;
      unit_status[i] = write_unit(units[i]);
      if (!unit_status[i].ok()) failed = true;
    });
  }
  for (const Status& s : unit_status) ENGRAM_RETURN_IF_ERROR(s);
  GenerationRecord record;
  record.id = gen_id;
  record.checksum_chunk_rows = chunk_rows;
  for (int li = 0; li < layout.num_layers(); ++li) {
    const auto& ts = tensors[static_cast<std::size_t>(li)];
    for (std::size_t k = 0; k < ts.size(); ++k) {
      const auto& d = digests[static_cast<std::size_t>(li)][k];
      record.tensors.push_back({ts[k].name, ts[k].size, XXH3_64bits(d.data(), d.size() * sizeof(std::uint64_t))});
    }
    record.rows += static_cast<std::uint64_t>(layout.layer_rows(li));
  }
  std::vector<std::string> files;
  files.reserve(units.size());
  for (const Unit& u : units) files.push_back(u.file);
  rocksdb::IngestExternalFileOptions ingest;
  ingest.move_files = true;
  ENGRAM_RETURN_IF_ERROR(FromRocks(im.holder->db->IngestExternalFile(cf, files, ingest),
                                   fmt::format("store {}: ingest generation {}", im.dir, gen_id)));
  // Publish: one synced manifest write makes the version visible.
  std::lock_guard<std::mutex> lock(im.mu);
  Manifest next = im.manifest;
  VersionInfo v;
  v.id = next.next_version++;
  v.generation = gen_id;
  v.kind = "ingest";
  v.created_unix = NowUnix();
  v.source = checkpoint.dir();
  next.next_generation = gen_id + 1;
  next.versions.push_back(v);
  next.generations.push_back(std::move(record));
  ENGRAM_RETURN_IF_ERROR(im.PersistManifest(next));
  im.manifest = std::move(next);
  generation->drop_when_unused = false;
  im.generations[gen_id] = std::move(generation);
  progress.Done();
  return v.id;
}

Result<VersionId> Store::EditRows(VersionId base, std::span<const RowEdit> edits) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> write_lock(im.write_mu);
  const Layout& layout = *im.layout;
  VersionInfo v;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    const VersionInfo* b = im.FindVersion(base);
    if (b == nullptr) return Status::NotFound(fmt::format("store {} has no version {}", im.dir, base));
    v.id = im.manifest.next_version;
    v.parent = base;
    v.generation = b->generation;
  }
  if (edits.empty()) return Status::InvalidArgument("EditRows: no rows to edit");
  rocksdb::WriteBatch batch;
  for (std::size_t i = 0; i < edits.size(); ++i) {
    const RowEdit& e = edits[i];
    if (e.layer_index < 0 || e.layer_index >= layout.num_layers()) {
      return Status::OutOfRange(
          fmt::format("edit {}: layer index {} is outside 0..{}", i, e.layer_index, layout.num_layers() - 1));
    }
    if (e.row < 0 || e.row >= layout.layer_rows(e.layer_index)) {
      return Status::OutOfRange(fmt::format("edit {}: row {} is outside layer {}'s {} rows", i, e.row,
                                            layout.layer(e.layer_index).layer_id, layout.layer_rows(e.layer_index)));
    }
    if (e.bytes.size() != layout.row_bytes()) {
      return Status::InvalidArgument(
          fmt::format("edit {}: {} bytes, rows are {} bytes", i, e.bytes.size(), layout.row_bytes()));
    }
    batch
        .Put(im.edits_cf, detail::EditKey(e.layer_index, static_cast<std::uint64_t>(e.row), v.id),
             rocksdb::Slice(reinterpret_cast<const char*>(e.bytes.data()), e.bytes.size()))
        .PermitUncheckedError();
  }
  std::lock_guard<std::mutex> lock(im.mu);
  Manifest next = im.manifest;
  next.next_version = v.id + 1;
  v.kind = "edit";
  v.created_unix = NowUnix();
  v.edited_rows = edits.size();
  next.versions.push_back(v);
  // Edits and the manifest that makes them visible go in one synced batch.
  batch.Put(detail::kManifestKey, detail::EncodeManifest(next)).PermitUncheckedError();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ENGRAM_RETURN_IF_ERROR(FromRocks(im.holder->db->Write(wo, &batch), fmt::format("store {}: write edits", im.dir)));
  im.manifest = std::move(next);
  for (const RowEdit& e : edits) {
    auto& list = im.edit_index[(static_cast<std::uint64_t>(e.layer_index) << 56) | static_cast<std::uint64_t>(e.row)];
    if (list.empty() || list.back() != v.id) list.push_back(v.id);
  }
  return v.id;
}

Status Store::DropVersion(VersionId version) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> write_lock(im.write_mu);
  std::lock_guard<std::mutex> lock(im.mu);
  const VersionInfo* v = im.FindVersion(version);
  if (v == nullptr) return Status::NotFound(fmt::format("store {} has no version {}", im.dir, version));
  for (const VersionInfo& other : im.manifest.versions) {
    if (other.parent == version) {
      return Status::FailedPrecondition(
          fmt::format("version {} is the parent of version {}: drop {} first", version, other.id, other.id));
    }
  }
  const std::uint64_t gen = v->generation;
  Manifest next = im.manifest;
  next.versions.erase(
      std::remove_if(next.versions.begin(), next.versions.end(), [&](const VersionInfo& x) { return x.id == version; }),
      next.versions.end());
  const bool gen_used = std::any_of(next.versions.begin(), next.versions.end(),
                                    [&](const VersionInfo& x) { return x.generation == gen; });
  if (!gen_used) {
    next.generations.erase(std::remove_if(next.generations.begin(), next.generations.end(),
                                          [&](const GenerationRecord& g) { return g.id == gen; }),
                           next.generations.end());
  }
  ENGRAM_RETURN_IF_ERROR(im.PersistManifest(next));
  im.manifest = std::move(next);
  im.version_states.erase(version);
  if (!gen_used) {
    // Readers that pinned it keep it alive; the column family goes with the last of them.
    auto it = im.generations.find(gen);
    if (it != im.generations.end()) {
      it->second->drop_when_unused = true;
      im.generations.erase(it);
    }
  }
  // Its edits stay readable by existing pins; the next Open deletes them.
  return Status::Ok();
}

Result<VersionHandle> Store::Pin(VersionId version) const {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.mu);
  auto it = im.version_states.find(version);
  VersionHandle h;
  if (it != im.version_states.end()) {
    h.state_ = it->second;
    return h;
  }
  ENGRAM_ASSIGN_OR_RETURN(auto state, im.BuildState(version));
  im.version_states[version] = state;
  h.state_ = std::move(state);
  return h;
}

namespace {
// The generation's direct block reader (ReadPath::kDirectBlocks), built on first use.
Result<detail::DirectBlockReader*> DirectReader(const Store::Impl& im, rocksdb::DB* db, GenerationData& g) {
  std::lock_guard<std::mutex> lock(g.direct_mu);
  if (!g.direct) {
    ENGRAM_ASSIGN_OR_RETURN(
        g.direct,
        detail::DirectBlockReader::Create(db, g.cf, im.direct_stats).WithContext(fmt::format("store {}", im.dir)));
  }
  return g.direct.get();
}
}  // namespace

Status Store::ReadRows(const VersionHandle& version, int layer_index, std::span<const std::int64_t> rows,
                       std::span<std::byte> out, ReadStats* stats) const {
  const Impl& im = *impl_;
  const Layout& layout = *im.layout;
  if (!version.valid()) return Status::InvalidArgument("ReadRows: the version handle is empty");
  if (layer_index < 0 || layer_index >= layout.num_layers()) {
    return Status::OutOfRange(
        fmt::format("ReadRows: layer index {} is outside 0..{}", layer_index, layout.num_layers() - 1));
  }
  const std::size_t row_bytes = layout.row_bytes();
  if (out.size() != rows.size() * row_bytes) {
    return Status::InvalidArgument(fmt::format("ReadRows: output holds {} bytes, {} rows need {}", out.size(),
                                               rows.size(), rows.size() * row_bytes));
  }
  const VersionHandle::State& st = *version.state_;
  const std::int64_t layer_rows = layout.layer_rows(layer_index);
  const std::uint64_t rpk = im.rows_per_key;
  // Requests by row: (row, request index), sorted, so that the requests of one page are adjacent. Rows are
  // copied from each page straight into `out` as it arrives; no page is staged.
  std::vector<std::pair<std::uint64_t, std::uint32_t>> reqs;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> edited;  // (row, request index)
  std::vector<VersionId> edited_version;
  reqs.reserve(rows.size());
  if (rows.size() > std::numeric_limits<std::uint32_t>::max()) {
    return Status::InvalidArgument(fmt::format("ReadRows: {} rows in one call; at most 2^32 - 1", rows.size()));
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::int64_t r = rows[i];
    if (r < 0 || r >= layer_rows) {
      return Status::OutOfRange(fmt::format("ReadRows: row {} (request {}) is outside layer {}'s {} rows", r, i,
                                            layout.layer(layer_index).layer_id, layer_rows));
    }
    if (!st.overlay->empty()) {
      auto e = st.overlay->find((static_cast<std::uint64_t>(layer_index) << 56) | static_cast<std::uint64_t>(r));
      if (e != st.overlay->end()) {
        edited.emplace_back(static_cast<std::uint64_t>(r), static_cast<std::uint32_t>(i));
        edited_version.push_back(e->second);
        continue;
      }
    }
    reqs.emplace_back(static_cast<std::uint64_t>(r), static_cast<std::uint32_t>(i));
  }
  std::sort(reqs.begin(), reqs.end());
  // Distinct pages and where each page's requests start in `reqs`.
  std::vector<std::uint64_t> pages;
  std::vector<std::size_t> group;  // group[p] .. group[p + 1]: requests of pages[p]
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const std::uint64_t page = reqs[i].first / rpk;
    if (pages.empty() || pages.back() != page) {
      pages.push_back(page);
      group.push_back(i);
    }
  }
  group.push_back(reqs.size());
  auto deliver = [&](std::size_t p, const char* value) {
    for (std::size_t j = group[p]; j < group[p + 1]; ++j) {
      std::memcpy(out.data() + static_cast<std::size_t>(reqs[j].second) * row_bytes,
                  value + (reqs[j].first % rpk) * row_bytes, row_bytes);
    }
  };

  const std::int32_t layer_id = layout.layer(layer_index).layer_id;
  rocksdb::DB* db = st.holder->db.get();
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.fill_cache = im.holder->block_cache != nullptr;
  auto page_rows = [&](std::size_t i) {
    return std::min<std::uint64_t>(rpk, static_cast<std::uint64_t>(layer_rows) - pages[i] * rpk);
  };
  // This call's reads: each thread's own counts, taken around the reads it runs for the call.
  std::atomic<std::uint64_t> call_reads{0}, call_bytes{0};
  auto counted = [&](const auto& read) {
    const detail::ThreadReadCounts before = detail::ThisThreadReads();
    read();
    const detail::ThreadReadCounts& after = detail::ThisThreadReads();
    call_reads.fetch_add(after.reads - before.reads, std::memory_order_relaxed);
    call_bytes.fetch_add(after.bytes - before.bytes, std::memory_order_relaxed);
  };
  struct AddStats {
    ReadStats* to;
    const std::atomic<std::uint64_t>& reads;
    const std::atomic<std::uint64_t>& bytes;
    ~AddStats() {
      if (to == nullptr) return;
      to->reads += reads.load();
      to->bytes += bytes.load();
    }
  } add_stats{stats, call_reads, call_bytes};
  if (im.options.read_path == ReadPath::kDirectBlocks) {
    ENGRAM_ASSIGN_OR_RETURN(detail::DirectBlockReader * reader, DirectReader(im, st.holder->db.get(), *st.generation));
    std::vector<std::uint64_t> keys(pages.size());
    for (std::size_t i = 0; i < pages.size(); ++i) keys[i] = (static_cast<std::uint64_t>(layer_index) << 56) | pages[i];
    Status s;
    counted([&] {
      s = reader->Read(
          keys, [&](std::size_t i) { return static_cast<std::uint32_t>(page_rows(i) * row_bytes); },
          im.options.direct_queue_depth,
          [&](std::size_t i, const std::byte* value) { deliver(i, reinterpret_cast<const char*>(value)); });
    });
    if (!s.ok()) {
      return std::move(s).WithContext(fmt::format("store {}: version {}: layer {}", im.dir, st.id, layer_id));
    }
  } else {
    // Groups of multiget_keys keys, one MultiGet each, run on read_threads threads; each group checks its
    // pages and copies their rows out. The error of the lowest failing page is returned.
    const std::size_t kBatch = std::clamp<std::size_t>(im.options.multiget_keys, 1, 32);
    const std::size_t batches = (pages.size() + kBatch - 1) / kBatch;
    std::mutex error_mu;
    std::size_t error_page = pages.size();
    Status error;
    im.pool->ParallelFor(batches, [&](std::size_t b) {
      const std::size_t begin = b * kBatch;
      const std::size_t n = std::min(kBatch, pages.size() - begin);
      std::array<std::string, 32> key_bytes;
      std::array<rocksdb::Slice, 32> keys;
      std::array<rocksdb::PinnableSlice, 32> values;
      std::array<rocksdb::Status, 32> statuses;
      for (std::size_t i = 0; i < n; ++i) {
        key_bytes[i] = detail::PageKey(layer_index, pages[begin + i]);
        keys[i] = key_bytes[i];
      }
      counted([&] { db->MultiGet(ro, st.generation->cf, n, keys.data(), values.data(), statuses.data(), true); });
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = begin + i;
        const std::uint64_t first = pages[p] * rpk;
        const std::uint64_t count = page_rows(p);
        Status bad;
        if (!statuses[i].ok()) {
          const StatusCode code =
              statuses[i].IsNotFound() || statuses[i].IsCorruption() ? StatusCode::kCorruption : StatusCode::kIOError;
          bad = {code, fmt::format("store {}: version {}: layer {} rows [{}, {}): {}", im.dir, st.id, layer_id, first,
                                   first + count, statuses[i].IsNotFound() ? "missing" : statuses[i].ToString())};
        } else if (values[i].size() != count * row_bytes) {
          bad = Status::Corruption(
              fmt::format("store {}: version {}: layer {} rows [{}, {}): value of {} bytes, "
                          "expected {}",
                          im.dir, st.id, layer_id, first, first + count, values[i].size(), count * row_bytes));
        }
        if (!bad.ok()) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (p < error_page) {
            error_page = p;
            error = std::move(bad);
          }
          continue;
        }
        deliver(p, values[i].data());
      }
    });
    if (!error.ok()) return error;
  }
  if (!edited.empty()) {
    std::vector<std::string> key_bytes(edited.size());
    std::vector<rocksdb::Slice> keys(edited.size());
    for (std::size_t i = 0; i < edited.size(); ++i) {
      key_bytes[i] = detail::EditKey(layer_index, edited[i].first, edited_version[i]);
      keys[i] = key_bytes[i];
    }
    std::vector<rocksdb::PinnableSlice> edit_values(edited.size());
    std::vector<rocksdb::Status> edit_status(edited.size());
    counted([&] {
      db->MultiGet(ro, st.edits_cf, keys.size(), keys.data(), edit_values.data(), edit_status.data(), false);
    });
    for (std::size_t i = 0; i < edited.size(); ++i) {
      if (!edit_status[i].ok() || edit_values[i].size() != row_bytes) {
        return Status::Corruption(fmt::format("store {}: version {}: layer {} row {} (edited in version {}): {}",
                                              im.dir, st.id, layer_id, edited[i].first, edited_version[i],
                                              edit_status[i].ok() ? "wrong size" : edit_status[i].ToString()));
      }
      std::memcpy(out.data() + static_cast<std::size_t>(edited[i].second) * row_bytes, edit_values[i].data(),
                  row_bytes);
    }
  }
  return Status::Ok();
}

Status Store::ReadRange(const VersionHandle& version, int layer_index, std::int64_t first_row,
                        std::span<std::byte> out) const {
  const Impl& im = *impl_;
  const Layout& layout = *im.layout;
  if (!version.valid()) return Status::InvalidArgument("ReadRange: the version handle is empty");
  if (layer_index < 0 || layer_index >= layout.num_layers()) {
    return Status::OutOfRange(
        fmt::format("ReadRange: layer index {} is outside 0..{}", layer_index, layout.num_layers() - 1));
  }
  const std::size_t row_bytes = layout.row_bytes();
  const std::int64_t layer_rows = layout.layer_rows(layer_index);
  const auto count = static_cast<std::int64_t>(out.size() / row_bytes);
  if (out.size() % row_bytes != 0 || first_row < 0 || first_row + count > layer_rows) {
    return Status::OutOfRange(fmt::format("ReadRange: rows [{}, {}) ({} bytes) are not inside layer {}'s {} rows",
                                          first_row, first_row + count, out.size(), layout.layer(layer_index).layer_id,
                                          layer_rows));
  }
  if (count == 0) return Status::Ok();
  const VersionHandle::State& st = *version.state_;
  const std::int32_t layer_id = layout.layer(layer_index).layer_id;
  const std::uint64_t rpk = im.rows_per_key;
  const auto first = static_cast<std::uint64_t>(first_row);
  const auto last = first + static_cast<std::uint64_t>(count);  // exclusive
  // Parts of whole pages, one a read thread: with kDirectBlocks each read in large direct reads (its
  // pages lie consecutively in their files), else with one RocksDB iterator.
  const std::uint64_t first_page = first / rpk;
  const std::uint64_t end_page = (last + rpk - 1) / rpk;
  const std::uint64_t parts =
      std::clamp<std::uint64_t>(std::max<std::uint32_t>(im.options.read_threads, 1), 1, end_page - first_page);
  const std::uint64_t per = (end_page - first_page + parts - 1) / parts;
  detail::DirectBlockReader* reader = nullptr;
  if (im.options.read_path == ReadPath::kDirectBlocks) {
    ENGRAM_ASSIGN_OR_RETURN(reader, DirectReader(im, st.holder->db.get(), *st.generation));
  }
  auto page_rows = [&](std::uint64_t page) {
    return std::min<std::uint64_t>(rpk, static_cast<std::uint64_t>(layer_rows) - page * rpk);
  };
  // The page's rows that are in the range, from its value.
  auto copy_page = [&](std::uint64_t page, const std::byte* value) {
    const std::uint64_t page_first = page * rpk;
    const std::uint64_t a = std::max(first, page_first);
    const std::uint64_t b = std::min(last, page_first + page_rows(page));
    std::memcpy(out.data() + (a - first) * row_bytes, value + (a - page_first) * row_bytes, (b - a) * row_bytes);
  };
  auto direct_part = [&](std::uint64_t p0, std::uint64_t p1) {
    return reader
        ->ReadSpan((static_cast<std::uint64_t>(layer_index) << 56) | p0, p1 - p0,
                   [&](std::uint64_t i) { return static_cast<std::uint32_t>(page_rows(p0 + i) * row_bytes); },
                   [&](std::uint64_t i, const std::byte* value) { copy_page(p0 + i, value); })
        .WithContext(
            fmt::format("store {}: version {}: layer {} rows [{}, {})", im.dir, st.id, layer_id, p0 * rpk, p1 * rpk));
  };
  auto iterator_part = [&](std::uint64_t p0, std::uint64_t p1) -> Status {
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    ro.fill_cache = false;
    ro.readahead_size = 8 << 20;
    const std::string upper = detail::PageKey(layer_index, p1);
    rocksdb::Slice upper_slice(upper);
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(st.holder->db->NewIterator(ro, st.generation->cf));
    it->Seek(detail::PageKey(layer_index, p0));
    for (std::uint64_t page = p0; page < p1; ++page, it->Next()) {
      const std::uint64_t page_first = page * rpk;
      if (!it->Valid()) {
        return Status::Corruption(fmt::format("store {}: version {}: layer {} rows [{}, {}): {}", im.dir, st.id,
                                              layer_id, page_first, page_first + page_rows(page),
                                              it->status().ok() ? "missing" : it->status().ToString()));
      }
      if (it->key().ToString() != detail::PageKey(layer_index, page) ||
          it->value().size() != page_rows(page) * row_bytes) {
        return Status::Corruption(
            fmt::format("store {}: version {}: layer {} rows [{}, {}): unexpected key or a "
                        "value of {} bytes (expected {})",
                        im.dir, st.id, layer_id, page_first, page_first + page_rows(page), it->value().size(),
                        page_rows(page) * row_bytes));
      }
      copy_page(page, reinterpret_cast<const std::byte*>(it->value().data()));
    }
    return Status::Ok();
  };
  std::mutex error_mu;
  Status error;
  im.pool->ParallelFor(parts, [&](std::size_t part) {
    const std::uint64_t p0 = first_page + part * per;
    const std::uint64_t p1 = std::min(end_page, p0 + per);
    if (p0 >= p1) return;
    Status s = reader != nullptr ? direct_part(p0, p1) : iterator_part(p0, p1);
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (error.ok()) error = std::move(s);
    }
  });
  if (!error.ok()) return error;
  // Edited rows in the range.
  std::vector<std::int64_t> edited;
  for (const auto& [key, edit_version] : *st.overlay) {
    if ((key >> 56) != static_cast<std::uint64_t>(layer_index)) continue;
    const std::uint64_t row = key & ((1ULL << 56) - 1);
    if (row >= first && row < last) edited.push_back(static_cast<std::int64_t>(row));
  }
  if (!edited.empty()) {
    std::vector<std::byte> rows(edited.size() * row_bytes);
    ENGRAM_RETURN_IF_ERROR(ReadRows(version, layer_index, edited, rows));
    for (std::size_t i = 0; i < edited.size(); ++i) {
      std::memcpy(out.data() + (static_cast<std::uint64_t>(edited[i]) - first) * row_bytes, rows.data() + i * row_bytes,
                  row_bytes);
    }
  }
  return Status::Ok();
}

Result<VerifyReport> Store::Verify(VersionId version) {
  Impl& im = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  ENGRAM_ASSIGN_OR_RETURN(VersionHandle h, Pin(version));
  const Layout& layout = *im.layout;
  std::vector<TensorChecksum> expected = tensor_checksums(version);
  const std::uint64_t rpk = im.rows_per_key;
  std::uint64_t chunk_rows = 0;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    const VersionInfo* vi = im.FindVersion(version);
    for (const auto& g : im.manifest.generations) {
      if (vi != nullptr && g.id == vi->generation) chunk_rows = g.checksum_chunk_rows;
    }
  }
  if (chunk_rows == 0)
    return Status::Corruption(fmt::format("store {}: manifest lacks the checksum chunk size", im.dir));
  const std::size_t row_bytes = layout.row_bytes();
  const bool fp8 = layout.row_format() == RowFormat::kFp8E4M3E8M0;
  const auto dim = static_cast<std::size_t>(layout.spec().row_dim);
  VerifyReport report;
  report.version = version;
  std::uint64_t total = 0;
  for (int li = 0; li < layout.num_layers(); ++li)
    total += static_cast<std::uint64_t>(layout.layer_rows(li)) * row_bytes;
  engram::detail::Progress progress(fmt::format("verify {} version {}", im.dir, version), total, !im.options.progress);

  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.fill_cache = false;
  ro.readahead_size = 2 << 20;
  std::unique_ptr<rocksdb::Iterator> it(h.state_->holder->db->NewIterator(ro, h.state_->generation->cf));
  it->SeekToFirst();
  auto record_failure = [&](const Status& s) {
    std::lock_guard<std::mutex> lock(im.mu);
    Manifest next = im.manifest;
    next.last_verification = fmt::format("version {}: FAILED at {}: {}", version, NowUnix(), s.message());
    if (im.PersistManifest(next).ok()) im.manifest = std::move(next);
    return s;
  };
  std::size_t tensor_index = 0;
  for (int li = 0; li < layout.num_layers(); ++li) {
    const std::int32_t layer_id = layout.layer(li).layer_id;
    const auto rows = static_cast<std::uint64_t>(layout.layer_rows(li));
    // The XXH3 tree of each tensor: one digest per chunk_rows rows, then XXH3 of the digests.
    XXH3_state_t* hw = XXH3_createState();
    XXH3_state_t* hs = XXH3_createState();
    XXH3_64bits_reset(hw);
    XXH3_64bits_reset(hs);
    struct Free {
      XXH3_state_t* a;
      XXH3_state_t* b;
      ~Free() {
        XXH3_freeState(a);
        XXH3_freeState(b);
      }
    } free_states{hw, hs};
    std::vector<std::uint64_t> chunk_digests[2];
    auto close_chunk = [&] {
      chunk_digests[0].push_back(XXH3_64bits_digest(hw));
      chunk_digests[1].push_back(XXH3_64bits_digest(hs));
      XXH3_64bits_reset(hw);
      XXH3_64bits_reset(hs);
    };
    for (std::uint64_t page = 0; page * rpk < rows; ++page) {
      const std::uint64_t first = page * rpk;
      const std::uint64_t count = std::min<std::uint64_t>(rpk, rows - first);
      if (!it->Valid()) {
        const Status s =
            it->status().ok()
                ? Status::Corruption(fmt::format("store {}: version {}: layer {} rows from {} are missing", im.dir,
                                                 version, layer_id, first))
                : Status::Corruption(fmt::format(
                      "store {}: version {}: first bad row: layer {} row {} (the block holding rows [{}, {}) "
                      "fails its check: {})",
                      im.dir, version, layer_id, first, first, first + count, it->status().ToString()));
        return record_failure(s);
      }
      if (it->key().ToString() != detail::PageKey(li, page) || it->value().size() != count * row_bytes) {
        return record_failure(Status::Corruption(fmt::format(
            "store {}: version {}: layer {} rows [{}, {}): unexpected key or a value of {} bytes (expected {})", im.dir,
            version, layer_id, first, first + count, it->value().size(), count * row_bytes)));
      }
      const char* v = it->value().data();
      for (std::uint64_t r = 0; r < count; ++r) {
        if ((first + r) % chunk_rows == 0 && first + r > 0) close_chunk();
        if (fp8) {
          XXH3_64bits_update(hw, v + r * row_bytes, dim);
          XXH3_64bits_update(hs, v + r * row_bytes + dim, dim / 32);
        } else {
          XXH3_64bits_update(hw, v + r * row_bytes, row_bytes);
        }
      }
      report.rows_checked += count;
      report.bytes_checked += count * row_bytes;
      progress.Add(count * row_bytes);
      it->Next();
    }
    close_chunk();
    const std::uint64_t digests[2] = {
        XXH3_64bits(chunk_digests[0].data(), chunk_digests[0].size() * sizeof(std::uint64_t)),
        XXH3_64bits(chunk_digests[1].data(), chunk_digests[1].size() * sizeof(std::uint64_t))};
    for (int part = 0; part < (fp8 ? 2 : 1); ++part, ++tensor_index) {
      if (tensor_index >= expected.size()) {
        return record_failure(Status::Corruption(fmt::format("store {}: manifest lacks tensor checksums", im.dir)));
      }
      if (expected[tensor_index].xxh3 != digests[part]) {
        return record_failure(Status::Corruption(
            fmt::format("store {}: version {}: tensor {} reads back with XXH3 {:016x}, ingest recorded {:016x}", im.dir,
                        version, expected[tensor_index].name, digests[part], expected[tensor_index].xxh3)));
      }
    }
  }
  // The version's edited rows: readable, checksummed blocks.
  for (const auto& [key, edit_version] : *h.state_->overlay) {
    const int li = static_cast<int>(key >> 56);
    const auto row = static_cast<std::int64_t>(key & ((1ULL << 56) - 1));
    std::vector<std::byte> buf(row_bytes);
    const Status s = ReadRows(h, li, std::span(&row, 1), buf);
    if (!s.ok()) return record_failure(s);
    ++report.rows_checked;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  progress.Done();
  std::lock_guard<std::mutex> lock(im.mu);
  Manifest next = im.manifest;
  next.last_verification =
      fmt::format("version {}: ok at {} ({} rows, {:.1f} s)", version, NowUnix(), report.rows_checked, report.seconds);
  ENGRAM_RETURN_IF_ERROR(im.PersistManifest(next));
  im.manifest = std::move(next);
  return report;
}

}  // namespace engram::store
