#include "cli/args.h"

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"

namespace hwid::cli {

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv,
                                 const std::set<std::string>& value_opts,
                                 const std::set<std::string>& flag_opts) {
  Args out;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      out.help_ = true;
      continue;
    }
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a.substr(2);
      std::optional<std::string> value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      if (value_opts.count(name) != 0) {
        if (!value.has_value()) {
          if (i + 1 >= argv.size()) {
            return absl::InvalidArgumentError(absl::StrCat("option --", name, " needs a value"));
          }
          value = argv[++i];
        }
        if (out.values_.count(name) != 0) {
          return absl::InvalidArgumentError(absl::StrCat("option --", name, " given twice"));
        }
        out.values_[name] = *value;
      } else if (flag_opts.count(name) != 0) {
        if (value.has_value()) {
          return absl::InvalidArgumentError(absl::StrCat("option --", name, " takes no value"));
        }
        out.flags_.insert(name);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown option --", name));
      }
      continue;
    }
    out.positional_.push_back(a);
  }
  return out;
}

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    return std::nullopt;
  }
  return it->second;
}

std::string Args::GetOr(const std::string& name, const std::string& def) const {
  auto v = Get(name);
  return v.has_value() ? *v : def;
}

}  // namespace hwid::cli
