// A small, strict command-line parser for the hwid CLI: --name value, --name=value, boolean
// flags, positionals. Unknown options are usage errors.
#ifndef HWID_CLI_ARGS_H_
#define HWID_CLI_ARGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hwid::cli {

class Args {
 public:
  // Parse: `value_opts` take a value, `flag_opts` do not. "--help"/"-h" is always accepted.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& value_opts,
                                    const std::set<std::string>& flag_opts);
  bool help() const { return help_; }
  std::optional<std::string> Get(const std::string& name) const;
  std::string GetOr(const std::string& name, const std::string& def) const;
  bool Flag(const std::string& name) const { return flags_.count(name) != 0; }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  bool help_ = false;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

}  // namespace hwid::cli

#endif  // HWID_CLI_ARGS_H_
