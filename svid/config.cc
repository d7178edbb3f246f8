#include "svid/config.h"

#include <csignal>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attestor_plugin/pluginmain/hcl.h"

namespace hwid::svid {
namespace {

absl::Status Bad(absl::string_view m) { return absl::InvalidArgumentError(absl::StrCat("config: ", m)); }

bool Absolute(const std::string& p) { return !p.empty() && p[0] == '/'; }

bool PlainFileName(const std::string& n) {
  return !n.empty() && n.find('/') == std::string::npos && n != "." && n != "..";
}

// SplitArgs splits cmd_args on blanks, honouring single and double quotes (spiffe-helper's
// shell-like splitting, without expansions).
absl::StatusOr<std::vector<std::string>> SplitArgs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  bool in_arg = false;
  char quote = 0;
  for (char c : s) {
    if (quote != 0) {
      if (c == quote) {
        quote = 0;
      } else {
        cur.push_back(c);
      }
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
      in_arg = true;
    } else if (c == ' ' || c == '\t') {
      if (in_arg) out.push_back(std::move(cur));
      cur.clear();
      in_arg = false;
    } else {
      cur.push_back(c);
      in_arg = true;
    }
  }
  if (quote != 0) return Bad("cmd_args: unterminated quote");
  if (in_arg) out.push_back(std::move(cur));
  return out;
}

}  // namespace

absl::StatusOr<Config> ParseConfig(absl::string_view hcl) {
  absl::StatusOr<pluginmain::HclObject> obj = pluginmain::ParseHcl(hcl);
  if (!obj.ok()) return Bad(obj.status().message());
  Config c;
  std::string key_alg = "ec-p256", renew_signal, cmd_args;
  pluginmain::HclDecoder d(*obj);
  d.Required("agent_address", &c.agent_address);
  d.Required("server_address", &c.server_address);
  d.Required("trust_domain", &c.trust_domain);
  d.Required("spiffe_id", &c.spiffe_id);
  d.Optional("server_spiffe_id", &c.server_spiffe_id);
  d.Required("key_type", &c.key_type);
  d.Optional("key_file", &c.key_file);
  d.Optional("tcti", &c.tcti);
  d.Optional("pkcs11_uri", &c.pkcs11_uri);
  d.Optional("key_alg", &key_alg);
  d.Required("cert_dir", &c.cert_dir);
  d.Optional("svid_file_name", &c.svid_file_name);
  d.Optional("svid_key_file_name", &c.svid_key_file_name);
  d.Optional("svid_bundle_file_name", &c.svid_bundle_file_name);
  d.Optional("ttl", &c.ttl, 0, 365LL * 24 * 3600);
  d.Optional("cmd", &c.cmd);
  d.Optional("cmd_args", &cmd_args);
  d.Optional("renew_signal", &renew_signal);
  d.Optional("pid_file_name", &c.pid_file_name);
  d.Optional("provider_dir", &c.provider_dir);
  absl::Status st = d.Finish();
  if (!st.ok()) return Bad(st.message());

  if (absl::StartsWith(c.agent_address, "unix://")) c.agent_address = c.agent_address.substr(7);
  if (absl::StartsWith(c.agent_address, "unix:")) c.agent_address = c.agent_address.substr(5);
  if (!Absolute(c.agent_address)) {
    return Bad(absl::StrCat("agent_address must be a unix socket path, got \"", c.agent_address,
                            "\""));
  }
  if (c.trust_domain.empty() || absl::StrContains(c.trust_domain, "/") ||
      absl::StrContains(c.trust_domain, ":")) {
    return Bad(absl::StrCat("trust_domain \"", c.trust_domain, "\" is not a trust domain name"));
  }
  const std::string prefix = absl::StrCat("spiffe://", c.trust_domain, "/");
  if (!absl::StartsWith(c.spiffe_id, prefix) || c.spiffe_id.size() == prefix.size() ||
      absl::StrContains(c.spiffe_id, "?") || absl::StrContains(c.spiffe_id, "#") ||
      absl::StrContains(c.spiffe_id, "//" + std::string("/"))) {
    return Bad(absl::StrCat("spiffe_id \"", c.spiffe_id, "\" is not a workload ID in ", prefix));
  }
  if (c.server_spiffe_id.empty()) c.server_spiffe_id = prefix + "spire/server";
  if (c.key_type == "tpm") {
    if (!Absolute(c.key_file)) return Bad("key_type \"tpm\" needs key_file (an absolute path)");
    if (!c.pkcs11_uri.empty()) return Bad("pkcs11_uri belongs to key_type \"pkcs11\"");
  } else if (c.key_type == "pkcs11") {
    if (c.pkcs11_uri.empty()) return Bad("key_type \"pkcs11\" needs pkcs11_uri");
    if (!c.key_file.empty() || !c.tcti.empty()) {
      return Bad("key_file and tcti belong to key_type \"tpm\"");
    }
  } else {
    return Bad(absl::StrCat("key_type must be \"tpm\" or \"pkcs11\", got \"", c.key_type, "\""));
  }
  absl::StatusOr<KeyAlg> alg = ParseKeyAlg(key_alg);
  if (!alg.ok()) return Bad(absl::StrCat("key_alg: ", alg.status().message()));
  c.key_alg = *alg;
  if (!Absolute(c.cert_dir)) return Bad("cert_dir must be an absolute path");
  for (const std::string* n : {&c.svid_file_name, &c.svid_key_file_name, &c.svid_bundle_file_name}) {
    if (!PlainFileName(*n)) return Bad(absl::StrCat("\"", *n, "\" is not a plain file name"));
  }
  if (c.svid_file_name == c.svid_key_file_name || c.svid_file_name == c.svid_bundle_file_name ||
      c.svid_key_file_name == c.svid_bundle_file_name) {
    return Bad("svid_file_name, svid_key_file_name and svid_bundle_file_name must differ");
  }
  if (!cmd_args.empty() && c.cmd.empty()) return Bad("cmd_args without cmd");
  absl::StatusOr<std::vector<std::string>> args = SplitArgs(cmd_args);
  if (!args.ok()) return args.status();
  c.cmd_args = *std::move(args);
  if (!renew_signal.empty()) {
    static const std::pair<const char*, int> kSignals[] = {
        {"SIGHUP", SIGHUP}, {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2},
        {"SIGINT", SIGINT}, {"SIGTERM", SIGTERM}, {"SIGQUIT", SIGQUIT}};
    for (const auto& [name, sig] : kSignals) {
      if (renew_signal == name) c.renew_signal = sig;
    }
    if (c.renew_signal == 0) {
      return Bad(absl::StrCat("renew_signal \"", renew_signal,
                              "\" is not SIGHUP, SIGUSR1, SIGUSR2, SIGINT, SIGTERM or SIGQUIT"));
    }
    if (c.cmd.empty() && c.pid_file_name.empty()) {
      return Bad("renew_signal needs cmd or pid_file_name (whom to signal)");
    }
  } else if (!c.pid_file_name.empty()) {
    return Bad("pid_file_name without renew_signal");
  }
  return c;
}

}  // namespace hwid::svid
