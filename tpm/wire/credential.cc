#include "tpm/wire/credential.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/ossl.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

void AppendBe32(uint32_t v, Bytes* out) {
  out->push_back(static_cast<uint8_t>(v >> 24));
  out->push_back(static_cast<uint8_t>(v >> 16));
  out->push_back(static_cast<uint8_t>(v >> 8));
  out->push_back(static_cast<uint8_t>(v));
}

// Kdfa is the SP 800-108 counter-mode KDF with HMAC (Part 1 §11.4.10.2):
//   K(i) = HMAC_hash(key, [i]32 || label || 0x00 || context_u || context_v || [bits]32).
absl::StatusOr<SecureBytes> Kdfa(TPMI_ALG_HASH hash, ByteSpan key, std::string_view label,
                                 ByteSpan context_u, ByteSpan context_v, uint32_t bits) {
  if (bits == 0 || bits % 8 != 0) {
    return absl::InternalError(absl::StrCat("KDFa: unsupported output length ", bits, " bits"));
  }
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(hash));
  OsslPtr<EVP_MAC> mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  if (mac == nullptr) {
    return OpenSslError("KDFa: EVP_MAC_fetch(HMAC)");
  }
  const size_t want = bits / 8;
  SecureBytes out;
  out.reserve(want + EVP_MAX_MD_SIZE);
  for (uint32_t counter = 1; out.size() < want; ++counter) {
    OsslPtr<EVP_MAC_CTX> ctx(EVP_MAC_CTX_new(mac.get()));
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                         const_cast<char*>(EVP_MD_get0_name(md)), 0),
        OSSL_PARAM_construct_end()};
    if (ctx == nullptr || EVP_MAC_init(ctx.get(), key.data(), key.size(), params) != 1) {
      return OpenSslError("KDFa: EVP_MAC_init");
    }
    Bytes head;
    AppendBe32(counter, &head);
    Bytes tail;
    AppendBe32(bits, &tail);
    const uint8_t zero = 0;
    if (EVP_MAC_update(ctx.get(), head.data(), head.size()) != 1 ||
        EVP_MAC_update(ctx.get(), reinterpret_cast<const uint8_t*>(label.data()), label.size()) !=
            1 ||
        EVP_MAC_update(ctx.get(), &zero, 1) != 1 ||
        EVP_MAC_update(ctx.get(), context_u.data(), context_u.size()) != 1 ||
        EVP_MAC_update(ctx.get(), context_v.data(), context_v.size()) != 1 ||
        EVP_MAC_update(ctx.get(), tail.data(), tail.size()) != 1) {
      return OpenSslError("KDFa: EVP_MAC_update");
    }
    SecureBytes block(EVP_MAX_MD_SIZE);
    size_t len = 0;
    if (EVP_MAC_final(ctx.get(), block.data(), &len, block.size()) != 1) {
      return OpenSslError("KDFa: EVP_MAC_final");
    }
    out.insert(out.end(), block.begin(), block.begin() + static_cast<std::ptrdiff_t>(len));
  }
  out.resize(want);
  return out;
}

// Kdfe is the SP 800-56A single-step KDF (Part 1 §11.4.10.3):
//   K(i) = H([i]32 || Z || label || 0x00 || party_u || party_v).
absl::StatusOr<SecureBytes> Kdfe(TPMI_ALG_HASH hash, ByteSpan z, std::string_view label,
                                 ByteSpan party_u, ByteSpan party_v, uint32_t bits) {
  if (bits == 0 || bits % 8 != 0) {
    return absl::InternalError(absl::StrCat("KDFe: unsupported output length ", bits, " bits"));
  }
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(hash));
  const size_t want = bits / 8;
  SecureBytes out;
  out.reserve(want + EVP_MAX_MD_SIZE);
  for (uint32_t counter = 1; out.size() < want; ++counter) {
    OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
    Bytes head;
    AppendBe32(counter, &head);
    const uint8_t zero = 0;
    if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), head.data(), head.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), z.data(), z.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), label.data(), label.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), &zero, 1) != 1 ||
        EVP_DigestUpdate(ctx.get(), party_u.data(), party_u.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), party_v.data(), party_v.size()) != 1) {
      return OpenSslError("KDFe: digest");
    }
    SecureBytes block(EVP_MAX_MD_SIZE);
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), block.data(), &len) != 1) {
      return OpenSslError("KDFe: EVP_DigestFinal_ex");
    }
    out.insert(out.end(), block.begin(), block.begin() + len);
  }
  out.resize(want);
  return out;
}

struct Seed {
  SecureBytes seed;
  TPM2B_ENCRYPTED_SECRET encrypted;
};

absl::StatusOr<Seed> RsaSeed(const TPMT_PUBLIC& ek, EVP_PKEY* pkey, size_t digest_size) {
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(ek.nameAlg));
  Seed out;
  std::memset(&out.encrypted, 0, sizeof(out.encrypted));
  out.seed.resize(digest_size);
  if (RAND_bytes(out.seed.data(), static_cast<int>(out.seed.size())) != 1) {
    return OpenSslError("MakeCredential: RAND_bytes");
  }
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr));
  if (ctx == nullptr || EVP_PKEY_encrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md) != 1 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md) != 1) {
    return OpenSslError("MakeCredential: RSA-OAEP setup");
  }
  // The label includes its terminating NUL ("IDENTITY\0", 9 bytes); OpenSSL takes ownership.
  static constexpr char kLabel[] = "IDENTITY";
  void* label = OPENSSL_memdup(kLabel, sizeof(kLabel));
  if (label == nullptr ||
      EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), label, static_cast<int>(sizeof(kLabel))) != 1) {
    OPENSSL_free(label);
    return OpenSslError("MakeCredential: RSA-OAEP label");
  }
  size_t len = sizeof(out.encrypted.secret);
  if (EVP_PKEY_encrypt(ctx.get(), out.encrypted.secret, &len, out.seed.data(),
                       out.seed.size()) != 1) {
    return OpenSslError("MakeCredential: RSA-OAEP encryption of the seed to the EK",
                        absl::StatusCode::kInvalidArgument);
  }
  out.encrypted.size = static_cast<UINT16>(len);
  return out;
}

absl::StatusOr<Seed> EccSeed(const TPMT_PUBLIC& ek, EVP_PKEY* ek_key, size_t digest_size) {
  const char* group = nullptr;
  size_t field = 0;
  switch (ek.parameters.eccDetail.curveID) {
    case TPM2_ECC_NIST_P256:
      group = "P-256";
      field = 32;
      break;
    case TPM2_ECC_NIST_P384:
      group = "P-384";
      field = 48;
      break;
    case TPM2_ECC_NIST_P521:
      group = "P-521";
      field = 66;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "MakeCredential: unsupported EK curve 0x",
          absl::Hex(ek.parameters.eccDetail.curveID, absl::kZeroPad4)));
  }
  OsslPtr<EVP_PKEY> eph(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", group));
  if (eph == nullptr) {
    return OpenSslError("MakeCredential: ephemeral EC key generation");
  }
  // Z = x coordinate of d_eph * Q_ek (OpenSSL's ECDH output, left-padded to the field size).
  OsslPtr<EVP_PKEY_CTX> dctx(EVP_PKEY_CTX_new_from_pkey(nullptr, eph.get(), nullptr));
  size_t z_len = 0;
  if (dctx == nullptr || EVP_PKEY_derive_init(dctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(dctx.get(), ek_key) != 1 ||
      EVP_PKEY_derive(dctx.get(), nullptr, &z_len) != 1) {
    return OpenSslError("MakeCredential: ECDH setup");
  }
  SecureBytes z(z_len);
  if (EVP_PKEY_derive(dctx.get(), z.data(), &z_len) != 1) {
    return OpenSslError("MakeCredential: ECDH");
  }
  z.resize(z_len);
  // Ephemeral public point, uncompressed: 04 || x || y, each coordinate `field` bytes.
  Bytes point(1 + 2 * field);
  size_t point_len = 0;
  if (EVP_PKEY_get_octet_string_param(eph.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point.data(),
                                      point.size(), &point_len) != 1 ||
      point_len != point.size() || point[0] != 0x04) {
    return OpenSslError("MakeCredential: ephemeral public point");
  }
  const ByteSpan eph_x(point.data() + 1, field);
  const ByteSpan eph_y(point.data() + 1 + field, field);
  const ByteSpan ek_x(ek.unique.ecc.x.buffer, ek.unique.ecc.x.size);

  Seed out;
  ASSIGN_OR_RETURN(out.seed, Kdfe(ek.nameAlg, AsSpan(z), "IDENTITY", eph_x, ek_x,
                                  static_cast<uint32_t>(digest_size * 8)));
  TPMS_ECC_POINT eph_point;
  std::memset(&eph_point, 0, sizeof(eph_point));
  eph_point.x.size = static_cast<UINT16>(field);
  std::memcpy(eph_point.x.buffer, eph_x.data(), field);
  eph_point.y.size = static_cast<UINT16>(field);
  std::memcpy(eph_point.y.buffer, eph_y.data(), field);
  std::memset(&out.encrypted, 0, sizeof(out.encrypted));
  size_t offset = 0;
  if (Tss2_MU_TPMS_ECC_POINT_Marshal(&eph_point, out.encrypted.secret,
                                     sizeof(out.encrypted.secret), &offset) != TSS2_RC_SUCCESS) {
    return absl::InternalError("MakeCredential: cannot marshal the ephemeral TPMS_ECC_POINT");
  }
  out.encrypted.size = static_cast<UINT16>(offset);
  return out;
}

absl::StatusOr<const EVP_CIPHER*> AesCfb(uint16_t bits) {
  switch (bits) {
    case 128:
      return EVP_aes_128_cfb128();
    case 192:
      return EVP_aes_192_cfb128();
    case 256:
      return EVP_aes_256_cfb128();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("MakeCredential: EK symmetric AES key size ", bits, " is not supported"));
  }
}

}  // namespace

absl::StatusOr<Credential> MakeCredential(const TPMT_PUBLIC& ek, ByteSpan secret,
                                          ByteSpan object_name) {
  if (ek.type != TPM2_ALG_RSA && ek.type != TPM2_ALG_ECC) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeCredential: EK type ", AlgName(ek.type), " is not rsa or ecc"));
  }
  ASSIGN_OR_RETURN(OsslPtr<EVP_PKEY> ek_key, PublicToEvp(ek));
  return MakeCredential(ek, ek_key.get(), secret, object_name);
}

absl::StatusOr<Credential> MakeCredential(const TPMT_PUBLIC& ek, EVP_PKEY* ek_key, ByteSpan secret,
                                          ByteSpan object_name) {
  // Inputs.
  if (ek.type != TPM2_ALG_RSA && ek.type != TPM2_ALG_ECC) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeCredential: EK type ", AlgName(ek.type), " is not rsa or ecc"));
  }
  const TPMA_OBJECT storage = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  if ((ek.objectAttributes & storage) != storage) {
    return absl::InvalidArgumentError(
        "MakeCredential: EK is not a restricted decryption (storage) key");
  }
  const size_t digest_size = DigestSize(ek.nameAlg);
  if (digest_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeCredential: EK nameAlg ", AlgName(ek.nameAlg), " is not supported"));
  }
  const TPMT_SYM_DEF_OBJECT& sym = ek.parameters.asymDetail.symmetric;
  if (sym.algorithm != TPM2_ALG_AES || sym.mode.aes != TPM2_ALG_CFB) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeCredential: EK symmetric algorithm ", AlgName(sym.algorithm), "/",
        AlgName(sym.mode.aes), " is not aes/cfb"));
  }
  ASSIGN_OR_RETURN(const EVP_CIPHER* cipher, AesCfb(sym.keyBits.aes));
  if (secret.empty() || secret.size() > digest_size) {
    return absl::InvalidArgumentError(absl::StrCat("MakeCredential: secret is ", secret.size(),
                                                   " bytes; it must be 1..", digest_size,
                                                   " for a ", AlgName(ek.nameAlg), " EK"));
  }
  RETURN_IF_ERROR(CheckName(object_name, "MakeCredential"));

  if (ek_key == nullptr ||
      EVP_PKEY_is_a(ek_key, ek.type == TPM2_ALG_RSA ? "RSA" : "EC") != 1) {
    return absl::InvalidArgumentError(
        "MakeCredential: the converted EK key is missing or not of the EK's type");
  }

  // Seed, shared with the EK.
  Seed seed;
  if (ek.type == TPM2_ALG_RSA) {
    ASSIGN_OR_RETURN(seed, RsaSeed(ek, ek_key, digest_size));
  } else {
    ASSIGN_OR_RETURN(seed, EccSeed(ek, ek_key, digest_size));
  }

  // encIdentity = CFB_symKey(IV = 0, TPM2B_DIGEST(secret) incl. its size).
  ASSIGN_OR_RETURN(SecureBytes sym_key, Kdfa(ek.nameAlg, AsSpan(seed.seed), "STORAGE", object_name,
                                             ByteSpan(), sym.keyBits.aes));
  SecureBytes plain;
  plain.push_back(static_cast<uint8_t>(secret.size() >> 8));
  plain.push_back(static_cast<uint8_t>(secret.size()));
  plain.insert(plain.end(), secret.begin(), secret.end());
  Bytes enc_identity(plain.size() + EVP_MAX_BLOCK_LENGTH);
  {
    OsslPtr<EVP_CIPHER_CTX> cctx(EVP_CIPHER_CTX_new());
    const uint8_t iv[16] = {0};
    int len = 0;
    int final_len = 0;
    if (cctx == nullptr ||
        EVP_EncryptInit_ex(cctx.get(), cipher, nullptr, sym_key.data(), iv) != 1 ||
        EVP_EncryptUpdate(cctx.get(), enc_identity.data(), &len, plain.data(),
                          static_cast<int>(plain.size())) != 1 ||
        EVP_EncryptFinal_ex(cctx.get(), enc_identity.data() + len, &final_len) != 1) {
      return OpenSslError("MakeCredential: AES-CFB");
    }
    enc_identity.resize(static_cast<size_t>(len + final_len));
  }

  // outerHMAC = HMAC_nameAlg(KDFa(seed, "INTEGRITY"), encIdentity || objectName).
  ASSIGN_OR_RETURN(SecureBytes hmac_key,
                   Kdfa(ek.nameAlg, AsSpan(seed.seed), "INTEGRITY", ByteSpan(), ByteSpan(),
                        static_cast<uint32_t>(digest_size * 8)));
  ASSIGN_OR_RETURN(const EVP_MD* md, DigestForAlg(ek.nameAlg));
  Bytes hmac_input(enc_identity);
  hmac_input.insert(hmac_input.end(), object_name.begin(), object_name.end());
  Bytes outer_hmac(EVP_MAX_MD_SIZE);
  unsigned int hmac_len = 0;
  if (HMAC(md, hmac_key.data(), static_cast<int>(hmac_key.size()), hmac_input.data(),
           hmac_input.size(), outer_hmac.data(), &hmac_len) == nullptr) {
    return OpenSslError("MakeCredential: HMAC");
  }
  outer_hmac.resize(hmac_len);

  // credentialBlob = TPM2B_ID_OBJECT { TPM2B_DIGEST(outerHMAC) || encIdentity }.
  TPM2B_ID_OBJECT id_object;
  std::memset(&id_object, 0, sizeof(id_object));
  const size_t blob_size = 2 + outer_hmac.size() + enc_identity.size();
  if (blob_size > sizeof(id_object.credential)) {
    return absl::InternalError("MakeCredential: credential blob too large");
  }
  id_object.credential[0] = static_cast<uint8_t>(outer_hmac.size() >> 8);
  id_object.credential[1] = static_cast<uint8_t>(outer_hmac.size());
  std::memcpy(id_object.credential + 2, outer_hmac.data(), outer_hmac.size());
  std::memcpy(id_object.credential + 2 + outer_hmac.size(), enc_identity.data(),
              enc_identity.size());
  id_object.size = static_cast<UINT16>(blob_size);

  Credential out;
  ASSIGN_OR_RETURN(out.id_object, MarshalIdObject(id_object));
  ASSIGN_OR_RETURN(out.encrypted_secret, MarshalEncryptedSecret(seed.encrypted));
  return out;
}

}  // namespace hwid::wire
