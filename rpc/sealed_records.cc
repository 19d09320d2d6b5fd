#include "rpc/sealed_records.h"

#include <kj/debug.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <climits>
#include <cstring>

namespace cairn {

struct SealedRecords::Direction {
  EVP_CIPHER_CTX* cipher = EVP_CIPHER_CTX_new();
  bool encrypt;
  bool client;  // the client's direction (its half of the key material)
  kj::byte iv[IV] = {};
  uint64_t generation = 0, records = 0, bytes = 0;
  size_t length = 0, done = 0;  // the record in progress
  bool open = false;

  Direction(bool encrypt, bool client) : encrypt(encrypt), client(client) {
    KJ_ASSERT(cipher != nullptr, "EVP_CIPHER_CTX_new");
  }
  ~Direction() {
    EVP_CIPHER_CTX_free(cipher);
    OPENSSL_cleanse(iv, sizeof(iv));
  }
};

namespace {
void check(int ok, const char* what) {
  KJ_ASSERT(ok == 1, "sealed records: OpenSSL failed", what);
}
}  // namespace

SealedRecords::SealedRecords(bool isServer, Derive derive, Rekey after)
    : derive_(kj::mv(derive)),
      rekeyAfter_(after),
      sending_(kj::heap<Direction>(true, !isServer)),
      receiving_(kj::heap<Direction>(false, isServer)) {
  rekey(*sending_);
  rekey(*receiving_);
}

SealedRecords::~SealedRecords() noexcept(false) {}

void SealedRecords::rekey(Direction& d) {
  kj::byte material[KEY_MATERIAL];
  KJ_DEFER(OPENSSL_cleanse(material, sizeof(material)));
  derive_(d.generation, kj::arrayPtr(material, sizeof(material)));
  const kj::byte* mine = material + (d.client ? 0 : KEY + IV);
  check(EVP_CipherInit_ex(d.cipher, EVP_aes_128_gcm(), nullptr, mine, nullptr, d.encrypt ? 1 : 0),
        "key");
  memcpy(d.iv, mine + KEY, IV);
  d.records = 0;
  d.bytes = 0;
}

namespace {
// The record's nonce: the direction's IV with the sequence number XORed into its last 8 bytes.
void nonce(const kj::byte iv[SealedRecords::IV], uint64_t sequence,
           kj::byte out[SealedRecords::IV]) {
  memcpy(out, iv, SealedRecords::IV);
  for (int i = 0; i < 8; ++i) out[SealedRecords::IV - 1 - i] ^= kj::byte(sequence >> (8 * i));
}

}  // namespace

void SealedRecords::begin(Direction& d, size_t length, const kj::byte header[HEADER]) {
  kj::byte n[IV];
  nonce(d.iv, d.records, n);
  check(EVP_CipherInit_ex(d.cipher, nullptr, nullptr, nullptr, n, -1), "nonce");
  int unused = 0;
  check(EVP_CipherUpdate(d.cipher, nullptr, &unused, header, HEADER), "header");
  d.length = length;
  d.done = 0;
  d.open = true;
}

void SealedRecords::update(Direction& d, const kj::byte* in, kj::byte* out, size_t size) {
  KJ_REQUIRE(d.open && d.done + size <= d.length, "more bytes than the record's length", d.done,
             size, d.length);
  d.done += size;
  while (size > 0) {
    int step = int(kj::min(size, size_t(INT_MAX / 2)));
    int written = 0;
    check(EVP_CipherUpdate(d.cipher, out, &written, in, step), "update");
    KJ_ASSERT(written == step, "AES-GCM is a stream cipher", written, step);
    in += step;
    out += step;
    size -= size_t(step);
  }
}

void SealedRecords::next(Direction& d) {
  d.open = false;
  ++d.records;
  d.bytes += d.length;
  if (d.records >= rekeyAfter_.records || d.bytes >= rekeyAfter_.bytes) {
    ++d.generation;
    rekey(d);
  }
}

void SealedRecords::beginSeal(size_t length, kj::byte header[HEADER]) {
  auto& d = *sending_;
  KJ_REQUIRE(!d.open, "a sealed record begun before the last one ended");
  KJ_REQUIRE(length <= MAX_RECORD, "sealed record too long", length);
  for (size_t i = 0; i < HEADER; ++i) header[i] = kj::byte(length >> (8 * (HEADER - 1 - i)));
  begin(d, length, header);
}

void SealedRecords::seal(const kj::byte* in, kj::byte* out, size_t size) {
  update(*sending_, in, out, size);
}

void SealedRecords::endSeal(kj::byte tag[TAG]) {
  auto& d = *sending_;
  KJ_REQUIRE(d.open && d.done == d.length, "a sealed record ended early", d.done, d.length);
  int unused = 0;
  check(EVP_EncryptFinal_ex(d.cipher, tag, &unused), "final");
  check(EVP_CIPHER_CTX_ctrl(d.cipher, EVP_CTRL_GCM_GET_TAG, TAG, tag), "tag");
  next(d);
}

size_t SealedRecords::beginOpen(const kj::byte header[HEADER]) {
  auto& d = *receiving_;
  KJ_REQUIRE(!d.open, "a sealed record opened before the last one ended");
  size_t length = 0;
  for (size_t i = 0; i < HEADER; ++i) length = (length << 8) | header[i];
  // Said before anything is read into a buffer of that size: a peer that is not Cairn, or a
  // stream out of step, is refused here.
  KJ_REQUIRE(length <= MAX_RECORD, "a sealed record longer than any peer sends", length,
             MAX_RECORD);
  begin(d, length, header);
  return length;
}

void SealedRecords::open(const kj::byte* in, kj::byte* out, size_t size) {
  update(*receiving_, in, out, size);
}

void SealedRecords::endOpen(const kj::byte tag[TAG]) {
  auto& d = *receiving_;
  KJ_REQUIRE(d.open && d.done == d.length, "a sealed record ended early", d.done, d.length);
  check(EVP_CIPHER_CTX_ctrl(d.cipher, EVP_CTRL_GCM_SET_TAG, TAG, const_cast<kj::byte*>(tag)),
        "tag");
  int unused = 0;
  kj::byte sink[16];
  // The connection is done for once a record fails: the state stays "open", so that nothing
  // more is opened on it.
  KJ_REQUIRE(EVP_DecryptFinal_ex(d.cipher, sink, &unused) == 1,
             "a sealed record failed its check: changed, dropped, repeated or reordered on the way",
             d.records);
  next(d);
}

}  // namespace cairn
