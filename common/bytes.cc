#include "common/bytes.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"

namespace hwid {
namespace internal {
void Cleanse(void* p, std::size_t n) noexcept {
  if (p != nullptr && n != 0) {
    OPENSSL_cleanse(p, n);
  }
}
}  // namespace internal

bool ConstantTimeEquals(ByteSpan a, ByteSpan b) {
  if (a.size() != b.size()) {
    return false;
  }
  if (a.empty()) {
    return true;
  }
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string HexEncode(ByteSpan data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(data.size() * 2);
  for (uint8_t b : data) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string Sha256Hex(ByteSpan data) {
  // Not SHA256(): it fetches SHA-256 from the default library context, which inside an OpenSSL
  // provider may have no provider that implements it yet (hwid.so loaded before the default
  // provider), and then fails and leaves the digest unwritten. A private context of its own loads
  // the default provider on first use whatever the application configured. Never freed.
  static OSSL_LIB_CTX* const ctx = OSSL_LIB_CTX_new();
  uint8_t d[SHA256_DIGEST_LENGTH] = {};
  EVP_MD* md = ctx != nullptr ? EVP_MD_fetch(ctx, "SHA256", nullptr) : nullptr;
  unsigned int len = 0;
  const bool ok = md != nullptr && EVP_Digest(data.data(), data.size(), d, &len, md, nullptr) == 1 &&
                  len == sizeof(d);
  EVP_MD_free(md);
  if (!ok) {
    return "";  // libcrypto cannot hash at all: callers get no name rather than a random one
  }
  return HexEncode(ByteSpan(d, sizeof(d)));
}

namespace {
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

absl::StatusOr<Bytes> HexDecode(absl::string_view hex) {
  if (hex.size() >= 2 && hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) {
    hex.remove_prefix(2);
  }
  if (hex.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hex string has odd length ", hex.size()));
  }
  Bytes out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("non-hex character at offset ", 2 * i + (hi < 0 ? 0 : 1)));
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

absl::StatusOr<Bytes> ReadFile(const std::string& path, std::size_t max_size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  Bytes out;
  uint8_t buf[8192];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(e)));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_size) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than the limit of ", max_size, " bytes"));
    }
    out.insert(out.end(), buf, buf + n);
  }
  close(fd);
  return out;
}

absl::Status WriteFile(const std::string& path, ByteSpan data, unsigned mode) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = absl::StrCat(dir, "/.tmp-", base, "-XXXXXX");
  const auto fail = [&](absl::string_view what, const std::string& obj) {
    const int e = errno;
    const absl::StatusCode code =
        (e == EACCES || e == EPERM || e == EROFS || e == ENOSPC || e == ENOENT || e == ENOTDIR)
            ? absl::StatusCode::kFailedPrecondition
            : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("cannot ", what, " ", obj, ": ", std::strerror(e)));
  };
  const int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return fail("create a temporary file in", dir);
  }
  bool done = false;
  struct Cleanup {
    int fd;
    const std::string& tmp;
    const bool& done;
    ~Cleanup() {
      if (fd >= 0) close(fd);
      if (!done) unlink(tmp.c_str());
    }
  } cleanup{fd, tmp, done};
  if (fchmod(fd, mode) != 0) {
    return fail("set the mode of", tmp);
  }
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write", tmp);
    }
    off += static_cast<std::size_t>(n);
  }
  if (fsync(fd) != 0) {
    return fail("fsync", tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return fail("rename a temporary file to", path);
  }
  done = true;
  // Make the rename itself durable.
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

}  // namespace hwid
