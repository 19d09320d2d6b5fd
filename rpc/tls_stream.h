// TLS with OpenSSL straight on a connection's socket, as a kj::AsyncIoStream.
//
// Why not kj-tls: it drives OpenSSL through 8 KiB readiness buffers, two or more trips through
// the event loop per 16 KiB record each way; on this machine that cost 40–65% of the streaming
// throughput (1 GiB write 279 against 795 MiB/s in plain text). OpenSSL is readiness-based
// itself, so here it reads and writes the non-blocking socket directly (read-ahead on: many
// records per system call; writes gathered in a buffer, many records per system call) and the
// event loop is only asked to wait when OpenSSL says it must.
//
// On a trusted network (both ends configured so) a connection still shakes hands — each side
// proves who it is with its certificate — and then carries its bytes unencrypted: encryption is
// most of what a byte costs here (a cold 1 GiB read: the mount 0.71 s of CPU with it, 0.36 s
// without). The two ends agree on it inside the handshake (ALPN, covered by its Finished
// messages, so nobody in between can choose it for them); one end that does not ask for it, or
// an older release that knows nothing of it, keeps the connection encrypted.
//
// Encrypted connections leave TLS's own records after the handshake too, when both ends know how
// (ALPN "cairn-sealed"; an older release does not offer it and keeps TLS records): the bytes go
// in sealed records (rpc/sealed_records.h), keyed by the TLS session, large and opened straight
// into the reader's buffer.
#pragma once

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/string.h>

#include "rpc/sealed_records.h"

namespace cairn {

// How the description of a failure starts when the peer refused us with a TLS alert. Cap'n
// Proto turns a connection's failure into DISCONNECTED for the calls on it, keeping the text: a
// mount checking whether it may mount tells a refusal from an outage by it.
constexpr kj::StringPtr PEER_REFUSED = "TLS: refused by the peer: "_kj;

class SslContext {
public:
  // PEM text: the CA to trust (the only one), this side's certificate and key. Peers must
  // present a certificate of that CA, in date; a client also checks the server's host name.
  // `trustedNetwork`: connections whose other end says so too go unencrypted after the handshake.
  // `crlPem`: the CA's revocation list (cairnctl cert revoke); a peer whose certificate is on it
  // is refused ("certificate revoked").
  SslContext(kj::StringPtr caPem, kj::StringPtr certPem, kj::StringPtr keyPem,
             bool trustedNetwork = false, kj::Maybe<kj::StringPtr> crlPem = nullptr);
  ~SslContext() noexcept(false);
  KJ_DISALLOW_COPY(SslContext);

  class Stream;
  // Shakes hands on `socket` (a connected TCP stream; its descriptor is taken over), as the
  // client checking that the server's certificate names `hostName`, or as the server. Fails
  // with OpenSSL's reason (and the certificate check's, when that was it).
  kj::Promise<kj::Own<Stream>> connect(kj::UnixEventPort& port, kj::Own<kj::AsyncIoStream> socket,
                                       kj::StringPtr hostName);
  kj::Promise<kj::Own<Stream>> accept(kj::UnixEventPort& port, kj::Own<kj::AsyncIoStream> socket);

  // Replaces the revocation list (null: none) for every handshake from now on. Throws, and keeps
  // the list in use, if the new one does not load or is not signed by the CA.
  void setRevocationList(kj::Maybe<kj::StringPtr> crlPem);
  // Whether the certificate with this serial number (Stream::peerSerial's form) is on it now.
  bool revokedSerial(kj::StringPtr hex) const;
  size_t revokedCount() const;  // entries on the list

  // From now on, neither offers nor accepts sealed records, as a release before them (for tests
  // of mixed releases).
  void withoutSealedRecords();

  // What this end offers after the handshake, besides TLS's own records.
  struct Wires {
    bool trustedNetwork = false;  // unencrypted, with a peer on a trusted network too
    bool sealed = true;           // sealed records
  };

private:
  void offerWires();  // ALPN's list, from wires_
  // A stream on the socket's descriptor with a new SSL object, not yet shaken hands.
  kj::Own<Stream> newStream(kj::UnixEventPort& port, kj::Own<kj::AsyncIoStream> socket);
  kj::String caPem_;     // a new list gets a new store, with the CA in it again
  void* ctx_;            // SSL_CTX
  void* crl_ = nullptr;  // X509_CRL: the list in use, if any
  Wires wires_;
};

class SslContext::Stream final : public kj::AsyncIoStream {
public:
  Stream(kj::UnixEventPort& port, int fd, void* ssl);
  ~Stream() noexcept(false);
  KJ_DISALLOW_COPY(Stream);

  // The common name of the peer's certificate (verified by then).
  kj::String peerCommonName();
  // The serial number of the peer's certificate, in hex.
  kj::String peerSerial();
  // False once both ends agreed to carry the bytes unencrypted (trusted network).
  bool encrypted() const { return wire_ != Wire::PLAIN; }
  // Whether the bytes go in sealed records (true for encrypted connections between releases
  // that know them) rather than in TLS's own.
  bool sealed() const { return wire_ == Wire::SEALED; }

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override;
  kj::Promise<void> write(const void* buffer, size_t size) override;
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override;
  kj::Promise<void> whenWriteDisconnected() override;
  void shutdownWrite() override;
  void getsockopt(int level, int option, void* value, kj::uint* length) override;
  void setsockopt(int level, int option, const void* value, kj::uint length) override;
  void getsockname(struct sockaddr* addr, kj::uint* length) override;
  void getpeername(struct sockaddr* addr, kj::uint* length) override;

private:
  friend class SslContext;
  // What an SSL call that made no progress waits for (NONE: the stream ended).
  enum class Wait { NONE, READABLE, WRITABLE };
  Wait attempt(int result);  // throws on a TLS error or a broken connection
  // Why the peer refused us, once a read took its alert: a write that then finds the connection
  // closed says so too (a server refusing our certificate, which TLS 1.3 judges only after our
  // side of the handshake, says why that way and shuts the connection).
  kj::Maybe<kj::String> refusedBecause_;
  kj::Promise<void> wait(Wait what);
  kj::Promise<void> handshake();
  // After the handshake, when both ends agreed to leave TLS's records (unencrypted on a trusted
  // network, or sealed records): the server sends one TLS record, the client reads it. Past it
  // both ends read and write the socket directly; before it, a client whose certificate the
  // server refused learns why (the alert) instead of reading it as data.
  kj::Promise<void> leaveTls();
  // The stream, once its handshake is done.
  static kj::Promise<kj::Own<Stream>> shakeHands(kj::Own<Stream> stream);
  kj::Promise<void> readable();
  kj::Promise<void> writable();
  // A server's refused handshake: our alert out, no more writes, and what the peer sent behind
  // its side of the handshake read and dropped until it closes (see SslContext::accept).
  kj::Promise<void> linger();
  kj::Promise<void> drain();
  kj::Promise<void> writeAll(kj::ArrayPtr<const kj::byte> first,
                             kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest);
  kj::Promise<size_t> readSome(kj::byte* out, size_t minBytes, size_t maxBytes, size_t done);
  // Sends what the write buffer holds (records SSL_write left there).
  kj::Promise<void> flushOut();
  // Once TLS is left, one read of the socket into `into` (MORE: `got` bytes came; END: it ended;
  // WAIT: nothing there yet); throws if the connection broke.
  enum class Fill { MORE, WAIT, END };
  Fill readSocket(kj::byte* into, size_t size, size_t& got);
  // Reads and writes of the socket itself (trusted network).
  kj::Promise<size_t> readPlain(kj::byte* out, size_t minBytes, size_t maxBytes, size_t done);
  kj::Promise<void> writePlain(kj::ArrayPtr<const kj::byte> first,
                               kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest);
  // And in sealed records.
  kj::Promise<size_t> readSealed(kj::byte* out, size_t minBytes, size_t maxBytes, size_t done);
  kj::Promise<void> writeSealed(kj::ArrayPtr<const kj::byte> first,
                                kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest);
  // Reads what the socket has into in_, with room for `need` bytes from inStart_.
  Fill fillIn(size_t need);
  // Sends what out_ holds; false when the socket is full.
  bool sendOut();

  int fd_;
  void* ssl_;  // SSL
  kj::Own<kj::UnixEventPort::FdObserver> observer_;
  // Shared by a read and a write waiting on the same readiness (TLS 1.3 can make a write read).
  kj::Maybe<kj::ForkedPromise<void>> readable_, writable_;
  bool eof_ = false;
  bool trustedNetwork_ = false;  // this end would go unencrypted
  // What carries the bytes once the handshake is done: TLS's records, or (both ends agreed, and
  // TLS is left) the socket itself or sealed records on it.
  enum class Wire { TLS, PLAIN, SEALED };
  Wire wire_ = Wire::TLS;

  // Sealed records. Ciphertext read ahead, [inStart_, inEnd_) of in_; opened bytes not yet
  // handed out (in in_, before inStart_).
  kj::Maybe<kj::Own<SealedRecords>> records_;
  kj::Array<kj::byte> in_;
  size_t inStart_ = 0, inEnd_ = 0;
  kj::ArrayPtr<kj::byte> pending_;
  // The record being opened: its length, how much of it is opened, and whether into the
  // reader's buffer (the whole record fits there) or in place in in_.
  struct Opening {
    size_t length, done;
    bool direct;
  };
  kj::Maybe<Opening> opening_;
  // Sealed bytes not yet sent, [outStart_, outEnd_) of out_; what is left of the record being
  // sealed.
  kj::Array<kj::byte> out_;
  size_t outStart_ = 0, outEnd_ = 0;
  size_t sealingLeft_ = 0;
  bool sealing_ = false;
};

}  // namespace cairn
