#include "engram/status.hpp"

#include <gtest/gtest.h>

namespace engram {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Status::InvalidArgument("odd value " + std::to_string(x));
  return x / 2;
}

Result<int> Quarter(int x) {
  ENGRAM_ASSIGN_OR_RETURN(int h, Half(x));
  ENGRAM_ASSIGN_OR_RETURN(int q, Half(h).WithContext("second halving"));
  return q;
}

TEST(Status, OkHasNoMessage) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "ok");
}

TEST(Status, ContextIsPrependedAsErrorsPropagate) {
  auto r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().ToString(), "invalid_argument: second halving: odd value 3");
}

TEST(Status, ContextOnOkStaysOk) {
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
}

TEST(Result, CarriesTheValue) {
  auto r = Quarter(8);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 2);
}

TEST(Result, FromOkStatusBecomesInternalError) {
  Result<int> r(Status::Ok());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultDeathTest, ValueOfAFailureTerminatesWithTheStatus) {
  Result<int> r(Status::NotFound("missing thing"));
  EXPECT_DEATH({ (void)r.value(); }, "missing thing");
}

}  // namespace
}  // namespace engram
