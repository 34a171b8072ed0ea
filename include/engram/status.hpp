// Status and Result<T>: the error model of every engram path that can fail.
//
// Modelled on RocksDB's Status and Abseil's StatusOr: a code, a human-readable message that names the
// file, field, id or position at fault, and context prepended as the error propagates
// ("open layout /x.json: field layers[1].primes[3]: 16000058 is not prime"). Both types are
// [[nodiscard]]: ignoring a failure is a compile error under -Werror.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace engram {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // bad input from the caller: a value, a file's content, an option
  kNotFound,            // a named thing (file, layer, preset, sequence) does not exist
  kOutOfRange,          // an id or a count beyond what the object holds (e.g. rollback past history)
  kCorruption,          // stored data fails a check (size, checksum, format)
  kIOError,             // the operating system refused or failed an I/O call
  kResourceExhausted,   // a budget would be exceeded
  kFailedPrecondition,  // the object is not in a state that allows the call
  kUnavailable,         // a feature is missing on this machine (no GPU, no io_uring, ...)
  kInternal,            // a broken invariant: a bug in engram
  kDeadlineExceeded,    // a wait ran past its deadline (the operation may still complete later)
};

// The stable lower-case name of a code ("invalid_argument"), used in messages and the C API.
std::string_view StatusCodeName(StatusCode code) noexcept;

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() noexcept { return {}; }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
  static Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
  static Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }

  [[nodiscard]] bool ok() const noexcept { return code_ == StatusCode::kOk; }
  [[nodiscard]] StatusCode code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // "invalid_argument: <message>", or "ok".
  [[nodiscard]] std::string ToString() const;

  // Prepends "context: " to the message of a non-OK status; an OK status stays OK.
  [[nodiscard]] Status WithContext(std::string_view context) &&;
  [[nodiscard]] Status WithContext(std::string_view context) const&;

  // Marks a status as deliberately ignored.
  void IgnoreError() const noexcept {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

namespace detail {
[[noreturn]] void DieOnBadResultAccess(const Status& status) noexcept;
}  // namespace detail

// Either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<1>, std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::in_place_index<0>, std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<0>(v_).ok()) {
      v_.template emplace<0>(StatusCode::kInternal, "Result constructed from an OK status without a value");
    }
  }

  [[nodiscard]] bool ok() const noexcept { return v_.index() == 1; }
  [[nodiscard]] Status status() const& { return ok() ? Status::Ok() : std::get<0>(v_); }
  [[nodiscard]] Status status() && { return ok() ? Status::Ok() : std::move(std::get<0>(v_)); }

  // Accessing the value of a failed Result terminates with the status printed: always checked.
  [[nodiscard]] T& value() & { return Check(), std::get<1>(v_); }
  [[nodiscard]] const T& value() const& { return Check(), std::get<1>(v_); }
  [[nodiscard]] T&& value() && { return Check(), std::move(std::get<1>(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  [[nodiscard]] Result WithContext(std::string_view context) && {
    if (ok()) return std::move(*this);
    return Result(std::move(std::get<0>(v_)).WithContext(context));
  }

 private:
  void Check() const {
    if (!ok()) detail::DieOnBadResultAccess(std::get<0>(v_));
  }
  std::variant<Status, T> v_;
};

}  // namespace engram

#define ENGRAM_CONCAT_INNER_(a, b) a##b
#define ENGRAM_CONCAT_(a, b) ENGRAM_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define ENGRAM_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::engram::Status engram_status_ = (expr);        \
    if (!engram_status_.ok()) return engram_status_; \
  } while (0)

// Like ENGRAM_RETURN_IF_ERROR, prepending `context` (anything convertible to std::string_view).
#define ENGRAM_RETURN_IF_ERROR_CTX(expr, context)                                    \
  do {                                                                               \
    ::engram::Status engram_status_ = (expr);                                        \
    if (!engram_status_.ok()) return std::move(engram_status_).WithContext(context); \
  } while (0)

// NOLINTBEGIN(bugprone-macro-parentheses): `lhs` may be a declaration, which cannot be parenthesised.
#define ENGRAM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

// `lhs = value of expr`, or return its status. `lhs` may declare a variable: ENGRAM_ASSIGN_OR_RETURN(auto x, F()).
#define ENGRAM_ASSIGN_OR_RETURN(lhs, expr) \
  ENGRAM_ASSIGN_OR_RETURN_IMPL_(ENGRAM_CONCAT_(engram_result_, __LINE__), lhs, expr)
