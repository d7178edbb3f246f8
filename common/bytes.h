// Byte buffers: plain Bytes, zeroizing SecureBytes, hex, constant-time comparison, file I/O.
#ifndef HWID_COMMON_BYTES_H_
#define HWID_COMMON_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace hwid {

using Bytes = std::vector<uint8_t>;
using ByteSpan = absl::Span<const uint8_t>;

namespace internal {
// ZeroizingAllocator wipes memory with OPENSSL_cleanse before it is released.
template <typename T>
struct ZeroizingAllocator {
  using value_type = T;
  ZeroizingAllocator() noexcept = default;
  template <typename U>
  ZeroizingAllocator(const ZeroizingAllocator<U>&) noexcept {}  // NOLINT
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept;
  template <typename U>
  bool operator==(const ZeroizingAllocator<U>&) const noexcept { return true; }
};
void Cleanse(void* p, std::size_t n) noexcept;
template <typename T>
void ZeroizingAllocator<T>::deallocate(T* p, std::size_t n) noexcept {
  Cleanse(p, n * sizeof(T));
  std::allocator<T>().deallocate(p, n);
}
}  // namespace internal

// SecureBytes holds secrets (auth values, PINs, credential secrets); its memory is wiped on
// release. Never log its contents.
using SecureBytes = std::vector<uint8_t, internal::ZeroizingAllocator<uint8_t>>;

inline ByteSpan AsSpan(const SecureBytes& b) { return ByteSpan(b.data(), b.size()); }
inline ByteSpan AsSpan(absl::string_view s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// ConstantTimeEquals compares two byte strings without data-dependent timing (lengths are public).
bool ConstantTimeEquals(ByteSpan a, ByteSpan b);

// HexEncode returns lower-case hex.
std::string HexEncode(ByteSpan data);
// Sha256Hex returns the lower-case hex SHA-256 of `data` (computed in a private library context,
// so it works inside a provider whatever providers the application loaded; "" only when
// libcrypto cannot hash at all).
std::string Sha256Hex(ByteSpan data);
// HexDecode accepts upper or lower case, optional "0x" prefix; odd length or non-hex is an error.
absl::StatusOr<Bytes> HexDecode(absl::string_view hex);

// ReadFile / WriteFile: whole-file I/O with errors that name the path.
absl::StatusOr<Bytes> ReadFile(const std::string& path, std::size_t max_size = 16u << 20);
// WriteFile writes atomically and durably: a temp file in the same directory (created 0600, then
// `mode`), fsync, rename over `path`, fsync of the directory. A crash leaves the old file or the
// new one, never a mix. FAILED_PRECONDITION for permission / missing directory / full disk,
// INTERNAL otherwise; the message names the path.
absl::Status WriteFile(const std::string& path, ByteSpan data, unsigned mode = 0644);

}  // namespace hwid

#endif  // HWID_COMMON_BYTES_H_
