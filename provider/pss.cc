#include "provider/pss.h"

#include <openssl/rsa.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/ossl.h"
#include "common/status_macros.h"

namespace hwid::provider {
namespace {

// Mgf1 fills `out` with MGF1(seed) using `md` (RFC 8017 B.2.1).
absl::Status Mgf1(const EVP_MD* md, ByteSpan seed, Bytes& out) {
  const int hlen = EVP_MD_get_size(md);
  size_t done = 0;
  for (uint32_t counter = 0; done < out.size(); ++counter) {
    uint8_t c[4] = {static_cast<uint8_t>(counter >> 24), static_cast<uint8_t>(counter >> 16),
                    static_cast<uint8_t>(counter >> 8), static_cast<uint8_t>(counter)};
    OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
    uint8_t h[EVP_MAX_MD_SIZE];
    unsigned int hl = 0;
    if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), seed.data(), seed.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), c, sizeof(c)) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), h, &hl) != 1 || static_cast<int>(hl) != hlen) {
      return OpenSslError("MGF1 hash");
    }
    const size_t n = std::min<size_t>(hl, out.size() - done);
    std::copy(h, h + n, out.begin() + static_cast<std::ptrdiff_t>(done));
    done += n;
  }
  return absl::OkStatus();
}

}  // namespace

int PssMaxSaltLength(int modulus_bits, int digest_len) {
  const int em_len = (modulus_bits - 1 + 7) / 8;
  return em_len - digest_len - 2;
}

absl::StatusOr<int> PssSaltLength(OSSL_LIB_CTX* libctx, EVP_PKEY* rsa, const EVP_MD* md,
                                  ByteSpan digest, ByteSpan sig) {
  if (rsa == nullptr || EVP_PKEY_get_base_id(rsa) != EVP_PKEY_RSA) {
    return absl::InvalidArgumentError("PSS salt check: not an RSA key");
  }
  const int hlen = EVP_MD_get_size(md);
  if (hlen <= 0 || digest.size() != static_cast<size_t>(hlen)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PSS salt check: digest is ", digest.size(), " bytes, expected ", hlen));
  }
  const int bits = EVP_PKEY_get_bits(rsa);
  const size_t k = static_cast<size_t>((bits + 7) / 8);
  if (sig.size() != k) {
    return absl::InvalidArgumentError(
        absl::StrCat("PSS salt check: signature is ", sig.size(), " bytes, modulus ", k));
  }
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(libctx, rsa, nullptr));
  if (ctx == nullptr || EVP_PKEY_verify_recover_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_NO_PADDING) != 1) {
    return OpenSslError("PSS salt check: raw RSA public operation setup");
  }
  Bytes em(k);
  size_t em_size = em.size();
  if (EVP_PKEY_verify_recover(ctx.get(), em.data(), &em_size, sig.data(), sig.size()) != 1 ||
      em_size != k) {
    return OpenSslError("PSS salt check: raw RSA public operation", absl::StatusCode::kPermissionDenied);
  }
  // EM is emLen = ceil((modBits-1)/8) bytes; with modBits % 8 == 1 the first octet is zero.
  const int em_bits = bits - 1;
  size_t em_len = static_cast<size_t>((em_bits + 7) / 8);
  ByteSpan e(em.data() + (k - em_len), em_len);
  if (k != em_len && em[0] != 0) {
    return absl::PermissionDeniedError("PSS salt check: leading octet not zero");
  }
  if (em_len < static_cast<size_t>(hlen) + 2 || e[em_len - 1] != 0xbc) {
    return absl::PermissionDeniedError("PSS salt check: trailer is not 0xbc");
  }
  const size_t db_len = em_len - static_cast<size_t>(hlen) - 1;
  ByteSpan h(e.data() + db_len, static_cast<size_t>(hlen));
  Bytes db(db_len);
  RETURN_IF_ERROR(Mgf1(md, h, db));
  for (size_t i = 0; i < db_len; ++i) {
    db[i] ^= e[i];
  }
  const int unused_bits = static_cast<int>(8 * em_len) - em_bits;
  db[0] &= static_cast<uint8_t>(0xff >> unused_bits);
  size_t i = 0;
  while (i < db_len && db[i] == 0) {
    ++i;
  }
  if (i == db_len || db[i] != 0x01) {
    return absl::PermissionDeniedError("PSS salt check: no 0x01 separator in DB");
  }
  const size_t salt_len = db_len - i - 1;
  // H' = Hash(0x00 * 8 || mHash || salt) must equal H.
  OsslPtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  static constexpr uint8_t kZeros[8] = {0};
  uint8_t hp[EVP_MAX_MD_SIZE];
  unsigned int hpl = 0;
  if (mctx == nullptr || EVP_DigestInit_ex(mctx.get(), md, nullptr) != 1 ||
      EVP_DigestUpdate(mctx.get(), kZeros, sizeof(kZeros)) != 1 ||
      EVP_DigestUpdate(mctx.get(), digest.data(), digest.size()) != 1 ||
      EVP_DigestUpdate(mctx.get(), db.data() + i + 1, salt_len) != 1 ||
      EVP_DigestFinal_ex(mctx.get(), hp, &hpl) != 1) {
    return OpenSslError("PSS salt check: hash");
  }
  if (!ConstantTimeEquals(ByteSpan(hp, hpl), h)) {
    return absl::PermissionDeniedError("PSS salt check: signature does not match the digest");
  }
  return static_cast<int>(salt_len);
}

}  // namespace hwid::provider
