#include "attestor_plugin/composer/handoff.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace hwid::composer {
namespace {

std::string RecordName(absl::string_view agent_id, ByteSpan pkix_der) {
  Bytes in(agent_id.begin(), agent_id.end());
  in.push_back(0);
  in.insert(in.end(), pkix_der.begin(), pkix_der.end());
  return Sha256Hex(in);
}

struct Parsed {
  std::string agent_id;
  std::string key_hash;
  int64_t expires = 0;
};

std::optional<Parsed> ParseRecord(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (lines.size() != 5 || lines[0] != "hwid-certified-key 1" || !lines[4].empty()) {
    return std::nullopt;
  }
  Parsed p;
  p.agent_id = lines[1];
  p.key_hash = lines[2];
  if (!absl::SimpleAtoi(lines[3], &p.expires)) {
    return std::nullopt;
  }
  return p;
}

absl::Status WriteAtomic(const std::string& dir, const std::string& name,
                         const std::string& data) {
  std::string tmp = absl::StrCat(dir, "/.tmp-", name, "-XXXXXX");
  const int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("creating a hand-off record in ", dir, ": ",
                                            std::strerror(errno)));
  }
  fchmod(fd, 0600);
  const bool ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  close(fd);
  if (!ok || rename(tmp.c_str(), absl::StrCat(dir, "/", name).c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("writing a hand-off record in ", dir, ": ",
                                            std::strerror(errno)));
  }
  return absl::OkStatus();
}

// PruneIfStillExpired removes an expired record without racing a concurrent writer: the record
// is moved aside first and read again there; if a fresh record for the same (agent, key) was
// renamed onto the name in between, it is the one moved aside, and it is moved back.
void PruneIfStillExpired(const std::string& dir, const std::string& name, absl::Time now) {
  std::string aside = absl::StrCat(dir, "/.prune-", name, "-XXXXXX");
  const int fd = mkstemp(aside.data());
  if (fd < 0) return;
  close(fd);
  const std::string path = absl::StrCat(dir, "/", name);
  if (rename(path.c_str(), aside.c_str()) != 0) {
    unlink(aside.c_str());
    return;
  }
  absl::StatusOr<Bytes> b = ReadFile(aside, 4096);
  std::optional<Parsed> p;
  if (b.ok()) p = ParseRecord(std::string(b->begin(), b->end()));
  if (p.has_value() && p->expires > absl::ToUnixSeconds(now)) {
    // A fresh record raced in: put it back unless an even newer one is already there.
    if (link(aside.c_str(), path.c_str()) != 0 && errno != EEXIST) {
      return;  // leave it aside rather than lose it silently; the next prune removes it
    }
  }
  unlink(aside.c_str());
}

}  // namespace

absl::Status CheckHandoffDir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') {
    return absl::FailedPreconditionError(
        absl::StrCat("certified_keys_dir must be an absolute path, got '", dir, "'"));
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("certified_keys_dir ", dir, " cannot be created: ", std::strerror(errno)));
  }
  struct stat st = {};
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("certified_keys_dir ", dir, " is not a directory"));
  }
  if (st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "certified_keys_dir ", dir, " is owned by uid ", st.st_uid, ", not by this process (uid ",
        geteuid(), "): another user could forge agent-key records"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "certified_keys_dir ", dir, " has mode ", absl::StrFormat("%04o", st.st_mode & 07777),
        "; it must be 0700 (other users could read or forge agent-key records)"));
  }
  return absl::OkStatus();
}

absl::Status RecordCertifiedKey(const std::string& dir, absl::string_view agent_id,
                                ByteSpan pkix_der, absl::Duration ttl, absl::Time now) {
  if (absl::Status st = CheckHandoffDir(dir); !st.ok()) {
    return st;
  }
  // Prune expired records (and stale temp files) and count the live ones.
  size_t live = 0;
  if (std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir); d != nullptr) {
    while (struct dirent* de = readdir(d.get())) {
      const std::string name = de->d_name;
      if (name == "." || name == "..") continue;
      const std::string path = absl::StrCat(dir, "/", name);
      absl::StatusOr<Bytes> b = ReadFile(path, 4096);
      std::optional<Parsed> p;
      if (b.ok()) p = ParseRecord(std::string(b->begin(), b->end()));
      if (!p.has_value() || p->expires <= absl::ToUnixSeconds(now)) {
        struct stat st = {};
        // Unparsable files younger than a few seconds may be a concurrent write in progress.
        if (p.has_value() || (stat(path.c_str(), &st) == 0 &&
                              st.st_mtime + 10 < absl::ToUnixSeconds(now))) {
          PruneIfStillExpired(dir, name, now);
        }
        continue;
      }
      ++live;
    }
  }
  if (live >= kMaxRecords) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "certified_keys_dir ", dir, " holds ", live, " live records (limit ", kMaxRecords, ")"));
  }
  const std::string content =
      absl::StrCat("hwid-certified-key 1\n", agent_id, "\n", Sha256Hex(pkix_der), "\n",
                   absl::ToUnixSeconds(now + ttl), "\n");
  return WriteAtomic(dir, RecordName(agent_id, pkix_der), content);
}

absl::Status CheckCertifiedKey(const std::string& dir, absl::string_view agent_id,
                               ByteSpan pkix_der, absl::Time now) {
  if (absl::Status st = CheckHandoffDir(dir); !st.ok()) {
    return absl::PermissionDeniedError(st.message());
  }
  const std::string key_hash = Sha256Hex(pkix_der);
  const std::string what = absl::StrCat("agent key binding: the agent SVID key (SPKI sha256 ",
                                        key_hash, ") of ", agent_id);
  absl::StatusOr<Bytes> b = ReadFile(absl::StrCat(dir, "/", RecordName(agent_id, pkix_der)), 4096);
  if (!b.ok()) {
    return absl::PermissionDeniedError(absl::StrCat(
        what, " was not certified by that agent's TPM in this attestation (is the agent's "
        "KeyManager the hwid TPM KeyManager, and keymanager_key_dir set on its hwid_tpm node "
        "attestor?)"));
  }
  std::optional<Parsed> p = ParseRecord(std::string(b->begin(), b->end()));
  if (!p.has_value() || p->agent_id != agent_id || p->key_hash != key_hash) {
    return absl::PermissionDeniedError(absl::StrCat(what, ": the hand-off record is damaged"));
  }
  if (p->expires <= absl::ToUnixSeconds(now)) {
    return absl::PermissionDeniedError(
        absl::StrCat(what, ": its certification expired (it is valid only for the attestation "
                           "that made it)"));
  }
  return absl::OkStatus();
}

}  // namespace hwid::composer
