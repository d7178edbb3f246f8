#include "svid/config.h"

#include <csignal>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attestor_plugin/pluginmain/hcl.h"
#include "pkcs11/uri.h"

namespace hwid::svid {
namespace {

// Bad: INVALID_ARGUMENT "config: ...". The HCL decoder (shared with the SPIRE plugins) words
// its messages for plugin_data; here the file is the helper's own configuration.
absl::Status Bad(absl::string_view m) {
  std::string msg(m);
  if (absl::StartsWith(msg, "plugin_data: ")) msg = msg.substr(13);
  if (absl::StartsWith(msg, "plugin_data ")) msg = msg.substr(12);
  return absl::InvalidArgumentError(absl::StrCat("config: ", msg));
}

bool Absolute(const std::string& p) { return !p.empty() && p[0] == '/'; }

// TrustDomainName: the SPIFFE spec's trust domain characters (lowercase letters, digits, ".",
// "-", "_").
bool TrustDomainName(const std::string& td) {
  if (td.empty() || td.size() > 255) return false;
  for (char ch : td) {
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
          ch == '_')) {
      return false;
    }
  }
  return true;
}

// WorkloadIdIn: `id` is spiffe://<td>/<segment>[/<segment>...] with the SPIFFE spec's path
// segments (letters, digits, ".", "-", "_"; no empty, "." or ".." segments, no trailing "/").
bool WorkloadIdIn(const std::string& id, const std::string& td) {
  const std::string prefix = absl::StrCat("spiffe://", td, "/");
  if (!absl::StartsWith(id, prefix) || id.size() > 2048) return false;
  for (absl::string_view seg : absl::StrSplit(absl::string_view(id).substr(prefix.size()), '/')) {
    if (seg.empty() || seg == "." || seg == "..") return false;
    for (char ch : seg) {
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '.' || ch == '-' || ch == '_')) {
        return false;
      }
    }
  }
  return true;
}

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
  if (!TrustDomainName(c.trust_domain)) {
    return Bad(absl::StrCat("trust_domain \"", c.trust_domain,
                            "\" is not a trust domain name (lowercase letters, digits, \".\", "
                            "\"-\", \"_\")"));
  }
  const std::string prefix = absl::StrCat("spiffe://", c.trust_domain, "/");
  if (!WorkloadIdIn(c.spiffe_id, c.trust_domain)) {
    return Bad(absl::StrCat("spiffe_id \"", c.spiffe_id, "\" is not a workload ID in ", prefix,
                            " (path segments of letters, digits, \".\", \"-\", \"_\")"));
  }
  if (c.server_spiffe_id.empty()) c.server_spiffe_id = prefix + "spire/server";
  if (!WorkloadIdIn(c.server_spiffe_id, c.trust_domain)) {
    return Bad(absl::StrCat("server_spiffe_id \"", c.server_spiffe_id,
                            "\" is not a SPIFFE ID in ", prefix));
  }
  if (c.key_type == "tpm") {
    if (!Absolute(c.key_file)) return Bad("key_type \"tpm\" needs key_file (an absolute path)");
    if (!c.pkcs11_uri.empty()) return Bad("pkcs11_uri belongs to key_type \"pkcs11\"");
  } else if (c.key_type == "pkcs11") {
    if (c.pkcs11_uri.empty()) return Bad("key_type \"pkcs11\" needs pkcs11_uri");
    absl::StatusOr<pkcs11::Pkcs11Uri> uri = pkcs11::ParseUri(c.pkcs11_uri);
    if (!uri.ok()) return Bad(absl::StrCat("pkcs11_uri: ", uri.status().message()));
    if (!uri->object.has_value() || uri->object->empty()) {
      return Bad(absl::StrCat("pkcs11_uri ", uri->redacted,
                              " names no key: add object=<label> (made on the token if absent)"));
    }
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
  for (const auto& [key, name] : {std::pair<const char*, const std::string*>{"svid_file_name",
                                                                            &c.svid_file_name},
                                  {"svid_key_file_name", &c.svid_key_file_name},
                                  {"svid_bundle_file_name", &c.svid_bundle_file_name}}) {
    if (!PlainFileName(*name)) {
      return Bad(absl::StrCat(key, " \"", *name, "\" is not a plain file name (no \"/\")"));
    }
  }
  if (c.svid_file_name == c.svid_key_file_name || c.svid_file_name == c.svid_bundle_file_name ||
      c.svid_key_file_name == c.svid_bundle_file_name) {
    return Bad("svid_file_name, svid_key_file_name and svid_bundle_file_name must differ");
  }
  if (!c.cmd.empty() && !Absolute(c.cmd)) return Bad("cmd must be an absolute path");
  if (!cmd_args.empty() && c.cmd.empty()) return Bad("cmd_args without cmd");
  if (!c.pid_file_name.empty() && !Absolute(c.pid_file_name)) {
    return Bad("pid_file_name must be an absolute path");
  }
  if (!c.provider_dir.empty() && !Absolute(c.provider_dir)) {
    return Bad("provider_dir must be an absolute path");
  }
  absl::StatusOr<std::vector<std::string>> args = SplitArgs(cmd_args);
  if (!args.ok()) return args.status();  // already "config: cmd_args: ..."
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
