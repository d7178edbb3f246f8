#include "tpm/wire/keystrength.h"

#include <array>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The odd primes that divide RSALib's M for every key size (M for 512-bit keys is the product of
// the first 39 primes, 2..167; larger keys use longer primorials).
constexpr std::array<uint32_t, 38> kRocaPrimes = {
    3,  5,  7,  11, 13, 17, 19, 23, 29,  31,  37,  41,  43,  47,  53,  59,  61,  67,  71,
    73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167};

// RocaTable holds, per prime r, the set {65537^i mod r} as a bitmask, and the primes grouped
// into products below 2^32 so that one reduction of the modulus, 32 bits at a time, serves a
// whole group.
struct RocaTable {
  struct Group {
    uint64_t product = 1;
    std::vector<size_t> members;  // indices into kRocaPrimes
  };
  std::array<std::array<uint64_t, 3>, kRocaPrimes.size()> subgroup{};  // bit v: v in <65537>
  std::vector<Group> groups;

  RocaTable() {
    for (size_t i = 0; i < kRocaPrimes.size(); ++i) {
      const uint32_t r = kRocaPrimes[i];
      const uint32_t g = 65537 % r;
      uint32_t v = 1;
      do {
        subgroup[i][v / 64] |= uint64_t{1} << (v % 64);
        v = (v * g) % r;
      } while (v != 1);
    }
    Group current;
    for (size_t i = 0; i < kRocaPrimes.size(); ++i) {
      if (current.product * kRocaPrimes[i] >= (uint64_t{1} << 32)) {
        groups.push_back(current);
        current = Group{};
      }
      current.product *= kRocaPrimes[i];
      current.members.push_back(i);
    }
    groups.push_back(current);
  }
};

const RocaTable& Roca() {
  static const RocaTable* table = new RocaTable();
  return *table;
}

}  // namespace

bool HasRocaFingerprint(ByteSpan modulus) {
  bool nonzero = false;
  for (uint8_t b : modulus) {
    nonzero |= b != 0;
  }
  if (!nonzero) {
    return false;
  }
  const RocaTable& t = Roca();
  for (const RocaTable::Group& g : t.groups) {
    uint64_t rem = 0;  // < product < 2^32, so (rem << 32) | word fits in 64 bits
    size_t pos = 0;
    const size_t head = modulus.size() % 4;  // a partial leading word
    uint64_t word = 0;
    for (; pos < head; ++pos) {
      word = (word << 8) | modulus[pos];
    }
    rem = word % g.product;
    for (; pos < modulus.size(); pos += 4) {
      word = (uint64_t{modulus[pos]} << 24) | (uint64_t{modulus[pos + 1]} << 16) |
             (uint64_t{modulus[pos + 2]} << 8) | modulus[pos + 3];
      rem = ((rem << 32) | word) % g.product;
    }
    for (size_t i : g.members) {
      const uint64_t v = rem % kRocaPrimes[i];
      if ((t.subgroup[i][v / 64] & (uint64_t{1} << (v % 64))) == 0) {
        return false;  // outside the subgroup: not an RSALib modulus
      }
    }
  }
  return true;
}

absl::Status CheckKeyStrength(const TPMT_PUBLIC& pub, std::string_view role) {
  if (pub.nameAlg == TPM2_ALG_SHA1) {
    return absl::PermissionDeniedError(absl::StrCat(
        Sv(role), " policy: nameAlg sha1 is refused (weak name algorithm: SHA-1 collisions are "
                  "practical and the name binds credential activation; use a SHA-256 template)"));
  }
  if (pub.type != TPM2_ALG_RSA) {
    return absl::OkStatus();
  }
  const TPM2B_PUBLIC_KEY_RSA& n = pub.unique.rsa;
  const ByteSpan modulus(n.buffer, n.size <= sizeof(n.buffer) ? n.size : 0);
  size_t skip = 0;
  while (skip < modulus.size() && modulus[skip] == 0) {
    ++skip;
  }
  int bits = 0;
  if (skip < modulus.size()) {
    bits = static_cast<int>((modulus.size() - skip - 1) * 8);
    for (uint8_t top = modulus[skip]; top != 0; top >>= 1) {
      ++bits;
    }
  }
  if (pub.parameters.rsaDetail.keyBits < kMinRsaBits || bits < kMinRsaBits) {
    return absl::PermissionDeniedError(absl::StrCat(
        Sv(role), " policy: RSA key of ", bits, " bits (keyBits ",
        pub.parameters.rsaDetail.keyBits, ") is refused (weak key: below ", kMinRsaBits,
        " bits)"));
  }
  if (HasRocaFingerprint(modulus)) {
    return absl::PermissionDeniedError(absl::StrCat(
        Sv(role), " policy: the RSA modulus has the ROCA fingerprint (CVE-2017-15361: made by "
                  "a vulnerable Infineon RSALib, factorable); update the TPM firmware and "
                  "re-create the key"));
  }
  return absl::OkStatus();
}

}  // namespace hwid::wire
