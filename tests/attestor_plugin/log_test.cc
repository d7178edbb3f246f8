// The hclog JSON lines: exactly what go-plugin's host parses (levels, six-digit timestamps,
// strings only), escaping that keeps one line per entry whatever the message contains.
#include "attestor_plugin/pluginmain/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attestor_plugin/hclog_check.h"

namespace hwid::pluginmain {
namespace {

using ::hwid::testing::ParseHclogLine;

absl::Time FixedTime() {
  return absl::FromCivil(absl::CivilSecond(2025, 1, 2, 3, 4, 5), absl::UTCTimeZone()) +
         absl::Microseconds(7);
}

TEST(HclogTest, ExactFormat) {
  EXPECT_EQ(FormatHclogLine(LogLevel::kInfo, FixedTime(), "hwid_tpm", "configured",
                            {{"pcrs", "sha256:0-7"}}),
            "{\"@level\":\"info\",\"@message\":\"configured\",\"@module\":\"hwid_tpm\","
            "\"@timestamp\":\"2025-01-02T03:04:05.000007Z\",\"pcrs\":\"sha256:0-7\"}\n");
  EXPECT_EQ(FormatHclogLine(LogLevel::kWarn, FixedTime(), "", "m", {}),
            "{\"@level\":\"warn\",\"@message\":\"m\",\"@timestamp\":\"2025-01-02T03:04:05.000007Z\"}\n");
}

TEST(HclogTest, EveryLevelIsOneHostAccepts) {
  for (LogLevel l : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn,
                     LogLevel::kError}) {
    std::string line = FormatHclogLine(l, absl::Now(), "m", "x", {});
    ASSERT_EQ(line.back(), '\n');
    line.pop_back();
    auto obj = ParseHclogLine(line);
    ASSERT_TRUE(obj.ok()) << obj.status();
    EXPECT_EQ((*obj)["@level"], LogLevelName(l));
    EXPECT_NE((*obj)["@level"], "warning");
  }
}

TEST(HclogTest, HostileContentStaysOneValidLine) {
  std::string nasty = "a\"b\\c\nd\re\tf\x01g\x7f\xff\xc3(\xe2\x82\xac";  // invalid UTF-8 too
  std::string line = FormatHclogLine(LogLevel::kError, absl::Now(), "mod\n", nasty,
                                     {{"@level", "debug"}, {"k\"ey", nasty}});
  ASSERT_EQ(line.find('\n'), line.size() - 1) << "one line only";
  line.pop_back();
  auto obj = ParseHclogLine(line);
  ASSERT_TRUE(obj.ok()) << obj.status();
  EXPECT_EQ((*obj)["@level"], "error") << "a field named @level must not override the level";
  EXPECT_EQ((*obj)["_@level"], "debug");
  EXPECT_THAT((*obj)["@message"], ::testing::HasSubstr("a\"b\\c\nd\re\tf"));
  EXPECT_THAT((*obj)["@message"], ::testing::HasSubstr("\xe2\x82\xac"));  // valid UTF-8 kept
  EXPECT_TRUE(obj->count("k\"ey"));
}

TEST(HclogTest, LongValuesAreCut) {
  std::string big(100000, 'x');
  std::string line = FormatHclogLine(LogLevel::kInfo, absl::Now(), "", big, {{"f", big}});
  EXPECT_LT(line.size(), 3 * kMaxLogValueBytes);
  EXPECT_THAT(line, ::testing::HasSubstr("...(truncated)"));
  line.pop_back();
  EXPECT_TRUE(ParseHclogLine(line).ok());
}

TEST(HclogTest, LoggerWritesWholeLinesFromManyThreadsAndFilters) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
  {
    Logger logger("t", fds[1]);
    logger.SetLevel(LogLevel::kInfo);
    logger.Debug("dropped");
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&logger, t] {
        for (int i = 0; i < 50; ++i) {
          logger.Info("msg", {{"thread", std::to_string(t)}, {"i", std::to_string(i)}});
        }
      });
    }
    for (auto& th : threads) {
      th.join();
    }
  }
  close(fds[1]);
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) {
    all.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  std::vector<std::string> lines = absl::StrSplit(all, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 200u);
  for (const std::string& l : lines) {
    auto obj = ParseHclogLine(l);
    ASSERT_TRUE(obj.ok()) << obj.status();
    EXPECT_EQ((*obj)["@message"], "msg");
    EXPECT_EQ((*obj)["@module"], "t");
  }
}

TEST(HclogCheckTest, CheckerRejectsWhatTheHostWouldNotParse) {
  // The checker itself must be able to fail (these are the host's rules).
  EXPECT_FALSE(ParseHclogLine(R"({"@level":"warning","@message":"x"})").ok());
  EXPECT_FALSE(ParseHclogLine(R"({"@level":"info","@message":"x","@timestamp":"2025-01-02T03:04:05.123Z"})").ok());
  EXPECT_FALSE(ParseHclogLine(R"({"@level":"info","@message":5})").ok());
  EXPECT_FALSE(ParseHclogLine(R"({"@level":"info"})").ok());
  EXPECT_FALSE(ParseHclogLine("[INFO] plain").ok());
  EXPECT_TRUE(ParseHclogLine(R"({"@level":"info","@message":"x","@timestamp":"2025-01-02T03:04:05.123456+01:00"})").ok());
}

}  // namespace
}  // namespace hwid::pluginmain
