// TSS2 PRIVATE KEY codec: hand-built DER rows (every optional field state, negative parents,
// unsupported features, DER strictness), PEM handling, and files written by tpm2-tools and
// tpm2-openssl against swtpm.
#include "tpm/wire/keyfile.h"

#include <openssl/pem.h>

#include <functional>
#include <string>
#include <vector>

#include "tests/tpm/wire/test_util.h"
#include "tpm/wire/marshal.h"

namespace hwid::wire {
namespace {

using ::hwid::wire::testing::Hex;
using ::hwid::wire::testing::IsOk;
using ::hwid::wire::testing::ReadTestdata;
using ::hwid::wire::testing::StatusIs;
using absl::StatusCode;

// --- A tiny DER writer of the test's own ---

Bytes Tlv(uint8_t tag, const Bytes& content) {
  Bytes out = {tag};
  const size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else if (n < 0x100) {
    out.insert(out.end(), {0x81, static_cast<uint8_t>(n)});
  } else {
    out.insert(out.end(), {0x82, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)});
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes Cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

Bytes Seq(std::initializer_list<Bytes> parts) { return Tlv(0x30, Cat(parts)); }
Bytes Explicit(int n, const Bytes& inner) { return Tlv(static_cast<uint8_t>(0xa0 + n), inner); }

const Bytes kLoadable = Hex("06066781050a0103");
const Bytes kImportable = Hex("06066781050a0104");
const Bytes kSealed = Hex("06066781050a0105");
const Bytes kOldKey = Hex("06056781050a02");
const Bytes kTrue = Hex("0101ff");
const Bytes kFalse = Hex("010100");
const Bytes kOwner = Hex("020440000001");

Bytes Pub() { return ReadTestdata("ecc_key.pub"); }
Bytes Priv() {
  Bytes p = Hex("007e");
  for (int i = 0; i < 0x7e; ++i) {
    p.push_back(static_cast<uint8_t>(i));
  }
  return p;
}
Bytes PubOs() { return Tlv(0x04, Pub()); }
Bytes PrivOs() { return Tlv(0x04, Priv()); }

struct Row {
  std::string name;
  Bytes der;
  StatusCode code;
  std::string substr;
  std::function<void(const TpmKeyFile&)> check;
};

TEST(ParseTpmKeyFile, DerRows) {
  const std::vector<Row> rows = {
      {"minimal_emptyauth_absent", Seq({kLoadable, kOwner, PubOs(), PrivOs()}), StatusCode::kOk,
       "",
       [](const TpmKeyFile& k) {
         EXPECT_FALSE(k.empty_auth);
         EXPECT_EQ(k.parent, 0x40000001u);
         EXPECT_EQ(k.pub, Pub());
         EXPECT_EQ(k.priv, Priv());
         EXPECT_FALSE(k.description.has_value());
         EXPECT_FALSE(k.rsa_parent);
       }},
      {"emptyauth_true", Seq({kLoadable, Explicit(0, kTrue), kOwner, PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_TRUE(k.empty_auth); }},
      {"emptyauth_false", Seq({kLoadable, Explicit(0, kFalse), kOwner, PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_FALSE(k.empty_auth); }},
      {"negative_parent", Seq({kLoadable, Hex("020481000001"), PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_EQ(k.parent, 0x81000001u); }},
      {"negative_parent_short", Seq({kLoadable, Hex("0201ff"), PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_EQ(k.parent, 0xffffffffu); }},
      {"positive_parent_5_bytes", Seq({kLoadable, Hex("02050081000001"), PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_EQ(k.parent, 0x81000001u); }},
      {"parent_zero_is_owner", Seq({kLoadable, Hex("020100"), PubOs(), PrivOs()}),
       StatusCode::kOk, "", [](const TpmKeyFile& k) { EXPECT_EQ(k.parent, 0x40000001u); }},
      {"description_and_rsaparent",
       Seq({kLoadable, Explicit(0, kTrue), Explicit(4, Tlv(0x0c, Hex("6d79206b6579e282ac"))),
            Explicit(5, kTrue), kOwner, PubOs(), PrivOs()}),
       StatusCode::kOk, "",
       [](const TpmKeyFile& k) {
         EXPECT_EQ(k.description.value(), "my key\xe2\x82\xac");
         EXPECT_TRUE(k.rsa_parent);
       }},
      {"empty", Bytes(), StatusCode::kInvalidArgument, "empty input", nullptr},
      {"wrong_oid", Seq({Hex("06066781050a0109"), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "not the loadable-key OID 2.23.133.10.1.3", nullptr},
      {"rsa_oid", Seq({Hex("06092a864886f70d010101"), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "loadable-key OID", nullptr},
      {"importable", Seq({kImportable, Explicit(2, Tlv(0x04, Hex("0001aa"))), kOwner, PubOs(),
                          PrivOs()}),
       StatusCode::kUnimplemented, "importable keys", nullptr},
      {"sealed", Seq({kSealed, kOwner, PubOs(), PrivOs()}), StatusCode::kUnimplemented,
       "sealed data", nullptr},
      {"old_tss2_key_blob", Seq({kOldKey, kOwner, PubOs(), PrivOs()}),
       StatusCode::kUnimplemented, "old TSS2 KEY BLOB", nullptr},
      {"policy_present",
       Seq({kLoadable, Explicit(0, kTrue),
            Explicit(1, Seq({Seq({Explicit(0, Hex("02020161")), Explicit(1, Tlv(0x04, {}))})})),
            kOwner, PubOs(), PrivOs()}),
       StatusCode::kUnimplemented, "policy [1]", nullptr},
      {"authpolicy_present",
       Seq({kLoadable, Explicit(3, Seq({})), kOwner, PubOs(), PrivOs()}),
       StatusCode::kUnimplemented, "authPolicy [3]", nullptr},
      {"secret_on_loadable", Seq({kLoadable, Explicit(2, Tlv(0x04, Hex("0001aa"))), kOwner,
                                  PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "secret [2] is only valid for importable keys", nullptr},
      {"unknown_field", Seq({kLoadable, Explicit(6, kTrue), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "unknown optional field [6]", nullptr},
      {"fields_out_of_order",
       Seq({kLoadable, Explicit(5, kTrue), Explicit(0, kTrue), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "[0] is repeated or out of order", nullptr},
      {"field_repeated",
       Seq({kLoadable, Explicit(0, kTrue), Explicit(0, kTrue), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "repeated or out of order", nullptr},
      // tpm2-openssl and tpm2-tools write TRUE as 0x01 (BER), so it must be accepted.
      {"boolean_true_as_01",
       Seq({kLoadable, Explicit(0, Hex("010101")), kOwner, PubOs(), PrivOs()}), StatusCode::kOk,
       "", [](const TpmKeyFile& k) { EXPECT_TRUE(k.empty_auth); }},
      {"boolean_wrong_length",
       Seq({kLoadable, Explicit(0, Hex("0102ffff")), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "emptyAuth [0]: BOOLEAN must have exactly one", nullptr},
      {"boolean_empty", Seq({kLoadable, Explicit(5, Hex("0100")), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "rsaParent [5]: BOOLEAN must have exactly one", nullptr},
      {"explicit_with_trailing",
       Seq({kLoadable, Explicit(0, Cat({kTrue, Hex("00")})), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "trailing bytes inside the explicit tag", nullptr},
      {"description_not_utf8",
       Seq({kLoadable, Explicit(4, Tlv(0x0c, Hex("c080"))), kOwner, PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "not valid UTF-8", nullptr},
      {"parent_too_big", Seq({kLoadable, Hex("02050100000000"), PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "does not fit a 32-bit handle", nullptr},
      {"parent_negative_too_big", Seq({kLoadable, Hex("0205ff7fffffff"), PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "negative INTEGER does not fit", nullptr},
      {"parent_non_minimal", Seq({kLoadable, Hex("02020001"), PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "non-minimal INTEGER", nullptr},
      {"parent_empty", Seq({kLoadable, Hex("0200"), PubOs(), PrivOs()}),
       StatusCode::kInvalidArgument, "empty INTEGER", nullptr},
      {"parent_missing", Seq({kLoadable, PubOs(), PrivOs()}), StatusCode::kInvalidArgument,
       "parent: expected tag 0x02, found 0x04", nullptr},
      {"privkey_missing", Seq({kLoadable, kOwner, PubOs()}), StatusCode::kInvalidArgument,
       "privkey is missing", nullptr},
      {"extra_field_after_privkey", Seq({kLoadable, kOwner, PubOs(), PrivOs(), Hex("0500")}),
       StatusCode::kInvalidArgument, "2 unexpected bytes after privkey", nullptr},
      {"trailing_after_sequence",
       Cat({Seq({kLoadable, kOwner, PubOs(), PrivOs()}), Hex("00")}),
       StatusCode::kInvalidArgument, "1 trailing bytes after the TPMKey SEQUENCE", nullptr},
      {"pub_with_trailing_byte",
       Seq({kLoadable, kOwner, Tlv(0x04, Cat({Pub(), Hex("00")})), PrivOs()}),
       StatusCode::kInvalidArgument, "pubkey: TPM2B_PUBLIC: 1 trailing bytes", nullptr},
      {"priv_size_mismatch", Seq({kLoadable, kOwner, PubOs(), Tlv(0x04, Hex("0005aabb"))}),
       StatusCode::kInvalidArgument, "privkey: TPM2B_PRIVATE: size field says 5 bytes", nullptr},
      {"pub_not_tpm", Seq({kLoadable, kOwner, Tlv(0x04, Hex("0002ffff")), PrivOs()}),
       StatusCode::kInvalidArgument, "pubkey: TPM2B_PUBLIC: malformed", nullptr},
      {"indefinite_length", Cat({Hex("3080"), kLoadable, kOwner, PubOs(), PrivOs(), Hex("0000")}),
       StatusCode::kInvalidArgument, "indefinite length is not DER", nullptr},
      {"non_minimal_length", Cat({Hex("308109"), kLoadable, Hex("020100")}),
       StatusCode::kInvalidArgument, "non-minimal length encoding", nullptr},
      {"length_past_end", Hex("3005060100"), StatusCode::kInvalidArgument,
       "length 5 but only 3 bytes remain", nullptr},
      {"not_a_sequence", Cat({Hex("3100")}), StatusCode::kInvalidArgument,
       "TPMKey SEQUENCE: expected tag 0x30, found 0x31", nullptr},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    absl::StatusOr<TpmKeyFile> k = ParseTpmKeyFile(r.der);
    if (r.code == StatusCode::kOk) {
      ASSERT_THAT(k, IsOk());
      r.check(*k);
    } else {
      EXPECT_THAT(k, StatusIs(r.code, r.substr));
    }
  }
}

TEST(ParseTpmKeyFile, EveryTruncationIsRejected) {
  const Bytes der = Seq({kLoadable, Explicit(0, kTrue), kOwner, PubOs(), PrivOs()});
  ASSERT_THAT(ParseTpmKeyFile(der), IsOk());
  for (size_t n = 0; n < der.size(); ++n) {
    EXPECT_FALSE(ParseTpmKeyFile(ByteSpan(der.data(), n)).ok()) << n;
  }
}

TpmKeyFile Sample() {
  TpmKeyFile k;
  k.pub = Pub();
  k.priv = Priv();
  return k;
}

TEST(EncodeTpmKeyFile, MinimalFormBytes) {
  TpmKeyFile k = Sample();
  EXPECT_EQ(EncodeTpmKeyFileDer(k).value(),
            Seq({kLoadable, Explicit(0, kTrue), kOwner, PubOs(), PrivOs()}));
  k.empty_auth = false;
  k.parent = 0x81000001;
  EXPECT_EQ(EncodeTpmKeyFileDer(k).value(),
            Seq({kLoadable, Hex("02050081000001"), PubOs(), PrivOs()}));
  k.parent = 0;  // written as the owner hierarchy
  k.description = "srv";
  k.rsa_parent = true;
  EXPECT_EQ(EncodeTpmKeyFileDer(k).value(),
            Seq({kLoadable, Explicit(4, Tlv(0x0c, Hex("737276"))), Explicit(5, kTrue), kOwner,
                 PubOs(), PrivOs()}));
  k.parent = 0x7f;
  EXPECT_EQ(EncodeTpmKeyFileDer(k).value(),
            Seq({kLoadable, Explicit(4, Tlv(0x0c, Hex("737276"))), Explicit(5, kTrue),
                 Hex("02017f"), PubOs(), PrivOs()}));
}

TEST(EncodeTpmKeyFile, RoundTripsPemAndDer) {
  std::vector<TpmKeyFile> keys;
  keys.push_back(Sample());
  TpmKeyFile auth = Sample();
  auth.empty_auth = false;
  auth.parent = 0x81000001;
  keys.push_back(auth);
  TpmKeyFile full = Sample();
  full.description = "workload key \xc3\xa9";
  full.rsa_parent = true;
  full.parent = 0x81000100;
  keys.push_back(full);
  for (const TpmKeyFile& k : keys) {
    absl::StatusOr<std::string> pem = EncodeTpmKeyFilePem(k);
    ASSERT_THAT(pem, IsOk());
    EXPECT_EQ(pem->rfind("-----BEGIN TSS2 PRIVATE KEY-----\n", 0), 0u);
    absl::StatusOr<Bytes> der = EncodeTpmKeyFileDer(k);
    ASSERT_THAT(der, IsOk());
    for (const Bytes& input : {Bytes(pem->begin(), pem->end()), *der}) {
      absl::StatusOr<TpmKeyFile> back = ParseTpmKeyFile(input);
      ASSERT_THAT(back, IsOk());
      EXPECT_EQ(back->parent, k.parent);
      EXPECT_EQ(back->empty_auth, k.empty_auth);
      EXPECT_EQ(back->pub, k.pub);
      EXPECT_EQ(back->priv, k.priv);
      EXPECT_EQ(back->description, k.description);
      EXPECT_EQ(back->rsa_parent, k.rsa_parent);
    }
  }
}

TEST(EncodeTpmKeyFile, RejectsInvalidContents) {
  TpmKeyFile k = Sample();
  k.pub.push_back(0);
  EXPECT_THAT(EncodeTpmKeyFileDer(k),
              StatusIs(StatusCode::kInvalidArgument, "cannot encode: pubkey: TPM2B_PUBLIC"));
  k = Sample();
  k.priv.clear();
  EXPECT_THAT(EncodeTpmKeyFilePem(k),
              StatusIs(StatusCode::kInvalidArgument, "cannot encode: privkey: TPM2B_PRIVATE"));
  k = Sample();
  k.description = std::string("\xff");
  EXPECT_THAT(EncodeTpmKeyFileDer(k),
              StatusIs(StatusCode::kInvalidArgument, "description is not valid UTF-8"));
}

// A file naming a persistent key: privkey is the 4-byte handle (tpm2-openssl PR #165's form).
TEST(TpmKeyFile, PersistentKeyReference) {
  TpmKeyFile k = Sample();
  k.priv.clear();
  k.persistent_handle = 0x81000301;
  const Bytes der = EncodeTpmKeyFileDer(k).value();
  EXPECT_EQ(der, Seq({kLoadable, Explicit(0, kTrue), kOwner, PubOs(), Hex("040481000301")}));
  absl::StatusOr<TpmKeyFile> back = ParseTpmKeyFile(der);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->persistent_handle, 0x81000301u);
  EXPECT_TRUE(back->priv.empty());
  EXPECT_EQ(back->pub, k.pub);
  // Four bytes that are not a persistent handle stay a malformed TPM2B_PRIVATE.
  EXPECT_THAT(ParseTpmKeyFile(Seq({kLoadable, kOwner, PubOs(), Hex("040480000001")})),
              StatusIs(StatusCode::kInvalidArgument, "privkey"));
  EXPECT_FALSE(ParseTpmKeyFile(Seq({kLoadable, kOwner, PubOs(), PrivOs()}))->persistent_handle);
  k.persistent_handle = 0x80000001;
  EXPECT_THAT(EncodeTpmKeyFileDer(k),
              StatusIs(StatusCode::kInvalidArgument, "not a persistent handle"));
}

Bytes AsBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

TEST(ParseTpmKeyFile, PemHandling) {
  const std::string pem = EncodeTpmKeyFilePem(Sample()).value();
  EXPECT_THAT(ParseTpmKeyFile(AsBytes("\n  " + pem + "\n\n")), IsOk());
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(pem + "garbage")),
              StatusIs(StatusCode::kInvalidArgument, "trailing data after the PEM block"));
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(pem + pem)),
              StatusIs(StatusCode::kInvalidArgument, "trailing data after the PEM block"));
  std::string relabelled = pem;
  for (const char* from : {"TSS2 PRIVATE KEY", "TSS2 PRIVATE KEY"}) {
    relabelled.replace(relabelled.find(from), std::string(from).size(), "PRIVATE KEY");
  }
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(relabelled)),
              StatusIs(StatusCode::kInvalidArgument, "PEM label \"PRIVATE KEY\""));
  std::string old = pem;
  for (int i = 0; i < 2; ++i) {
    old.replace(old.find("TSS2 PRIVATE KEY"), 16, "TSS2 KEY BLOB");
  }
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(old)),
              StatusIs(StatusCode::kUnimplemented, "TSS2 KEY BLOB"));
  std::string broken = pem;
  broken[40] = '*';
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(broken)), StatusIs(StatusCode::kInvalidArgument, ""));
  const std::string truncated = pem.substr(0, pem.size() / 2);
  EXPECT_THAT(ParseTpmKeyFile(AsBytes(truncated)), StatusIs(StatusCode::kInvalidArgument, ""));
  // A PEM body that is DER with trailing garbage.
  Bytes der = EncodeTpmKeyFileDer(Sample()).value();
  der.push_back(0);
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio(bio.get(), "TSS2 PRIVATE KEY", "", der.data(), static_cast<long>(der.size()));
  char* mem = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &mem);
  EXPECT_THAT(ParseTpmKeyFile(Bytes(mem, mem + len)),
              StatusIs(StatusCode::kInvalidArgument, "1 trailing bytes after the TPMKey SEQUENCE"));
}

// Files written by real tools against swtpm (testdata/README.md).
TEST(ParseTpmKeyFile, Tpm2ToolsAndTpm2OpensslFiles) {
  struct File {
    std::string name;
    bool empty_auth;  // as written in the file
    TPMI_ALG_PUBLIC type;
  };
  for (const File& f : std::vector<File>{
           // tpm2-tools 5.4 tpm2_encodeobject writes emptyAuth inverted: FALSE without -p...
           {"tpm2tools_ecc_key.pem", false, TPM2_ALG_ECC},
           // ...and TRUE with -p (the key does need its password).
           {"tpm2tools_rsa_authkey.pem", true, TPM2_ALG_RSA},
           {"tpm2openssl_ec_key.pem", true, TPM2_ALG_ECC},
           {"tpm2openssl_rsa_authkey.pem", false, TPM2_ALG_RSA}}) {
    SCOPED_TRACE(f.name);
    const Bytes file = ReadTestdata(f.name);
    absl::StatusOr<TpmKeyFile> k = ParseTpmKeyFile(file);
    ASSERT_THAT(k, IsOk());
    EXPECT_EQ(k->parent, 0x40000001u);
    EXPECT_EQ(k->empty_auth, f.empty_auth);
    EXPECT_FALSE(k->rsa_parent);
    EXPECT_FALSE(k->description.has_value());
    absl::StatusOr<TPM2B_PUBLIC> pub = ParsePublic(k->pub);
    ASSERT_THAT(pub, IsOk());
    EXPECT_EQ(pub->publicArea.type, f.type);
    EXPECT_THAT(ParsePrivate(k->priv), IsOk());
    // Our minimal form is what tpm2-openssl writes for an empty-auth key, except that we encode
    // TRUE as DER's 0xff where it writes 0x01.
    if (f.name == "tpm2openssl_ec_key.pem") {
      const Bytes ours = EncodeTpmKeyFileDer(*k).value();
      Bytes theirs = ours;
      ASSERT_EQ(Bytes(ours.begin() + 11, ours.begin() + 16), Hex("a0030101ff"));
      theirs[15] = 0x01;
      OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
      PEM_write_bio(bio.get(), "TSS2 PRIVATE KEY", "", theirs.data(),
                    static_cast<long>(theirs.size()));
      char* mem = nullptr;
      const long len = BIO_get_mem_data(bio.get(), &mem);
      EXPECT_EQ(Bytes(mem, mem + len), file);
    }
  }
  // The tpm2-tools file wraps the key whose public area tpm2_create wrote.
  EXPECT_EQ(ParseTpmKeyFile(ReadTestdata("tpm2tools_ecc_key.pem")).value().pub,
            ReadTestdata("ecc_key.pub"));
}

}  // namespace
}  // namespace hwid::wire
