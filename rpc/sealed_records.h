// Sealed records: how an encrypted connection carries its bytes once TLS has authenticated both
// ends and agreed on keys.
//
// Why not TLS's own records: they hold at most 16 KiB, and OpenSSL opens each one into a buffer of
// its own and copies it out again. A 1 MiB read reply is 64 records, each paying OpenSSL 3's
// per-record work (a data server: 6–7 µs more CPU per random read with TLS than without, most of
// it not the cipher), and the mount copies every byte once more than a plain connection does.
// A sealed record holds up to 4 MiB and is opened straight into the reader's buffer: one pass of
// AES-GCM per byte on each side, as with kernel TLS (which this kernel does not have).
//
// The format: a 4-byte length (big-endian, at most MAX_RECORD), the ciphertext, a 16-byte tag.
// AES-128-GCM, the length as the additional data. Each direction has its own key and IV from the
// TLS session's exporter (RFC 8446 §7.5, label EXPORTER_LABEL, the key generation as the
// context); a record's nonce is the IV XOR its sequence number, so a record dropped, repeated,
// reordered or moved to the other direction fails its tag, as does any byte changed. Both ends
// count records and bytes and move to the next generation's keys at the same record (Rekey:
// far inside AES-GCM's limits for one key).
#pragma once

#include <kj/array.h>
#include <kj/common.h>
#include <kj/function.h>
#include <kj/string.h>

#include <cstdint>

namespace cairn {

class SealedRecords {
public:
  static constexpr size_t HEADER = 4;
  static constexpr size_t TAG = 16;
  static constexpr size_t MAX_RECORD = 4u << 20;
  static constexpr size_t KEY = 16, IV = 12;
  // What both directions' keys come from: KEY + IV bytes for the client's direction, then the
  // same for the server's, for the given generation.
  static constexpr size_t KEY_MATERIAL = 2 * (KEY + IV);
  static constexpr kj::StringPtr EXPORTER_LABEL = "EXPORTER-cairn-sealed-records"_kj;
  using Derive = kj::Function<void(uint64_t generation, kj::ArrayPtr<kj::byte> out)>;
  // When a direction moves to its next keys: after this many records or bytes with one key,
  // whichever comes first (both ends must use the same).
  struct Rekey {
    uint64_t records = uint64_t(1) << 24;
    uint64_t bytes = uint64_t(1) << 34;  // 16 GiB
  };

  // `derive` fills KEY_MATERIAL bytes for a generation (the TLS exporter; a test's own function).
  SealedRecords(bool isServer, Derive derive, Rekey after);
  SealedRecords(bool isServer, Derive derive) : SealedRecords(isServer, kj::mv(derive), Rekey()) {}
  ~SealedRecords() noexcept(false);
  KJ_DISALLOW_COPY(SealedRecords);

  // Sealing one record of `length` bytes: begin (fills its header), then its bytes in order in
  // as many pieces as convenient (`out` may be `in`), then end (fills its tag).
  void beginSeal(size_t length, kj::byte header[HEADER]);
  void seal(const kj::byte* in, kj::byte* out, size_t size);
  void endSeal(kj::byte tag[TAG]);

  // Opening one: begin with its header (returns the length; throws on one over MAX_RECORD),
  // its ciphertext in pieces, then end with its tag (throws if the record is not the one the
  // peer sealed next: nothing opened since begin may then be used).
  size_t beginOpen(const kj::byte header[HEADER]);
  void open(const kj::byte* in, kj::byte* out, size_t size);
  void endOpen(const kj::byte tag[TAG]);

private:
  struct Direction;
  void rekey(Direction& d);
  void begin(Direction& d, size_t length, const kj::byte header[HEADER]);
  void update(Direction& d, const kj::byte* in, kj::byte* out, size_t size);
  void next(Direction& d);  // after a record: count it, and rekey when due
  Derive derive_;
  Rekey rekeyAfter_;
  kj::Own<Direction> sending_, receiving_;
};

}  // namespace cairn
