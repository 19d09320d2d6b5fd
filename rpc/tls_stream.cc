#include "rpc/tls_stream.h"

#include <fcntl.h>
#include <kj/debug.h>
#include <kj/vector.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "rpc/busy_poll.h"

namespace cairn {

namespace {

SSL* sslOf(void* p) {
  return static_cast<SSL*>(p);
}
SSL_CTX* ctxOf(void* p) {
  return static_cast<SSL_CTX*>(p);
}

// OpenSSL's error queue, and the certificate check's verdict when that is what failed.
kj::String errorText(SSL* ssl) {
  kj::Vector<kj::String> parts;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof(buf));
    parts.add(kj::str(buf));
  }
  if (ssl != nullptr) {
    long verdict = SSL_get_verify_result(ssl);
    if (verdict != X509_V_OK) {
      parts.add(kj::str("certificate check: ", X509_verify_cert_error_string(verdict)));
    }
  }
  if (parts.size() == 0) return kj::str("TLS error");
  return kj::strArray(parts, "; ");
}

// The peer refused us with an alert (`why`, OpenSSL's words).
kj::Exception refused(kj::StringPtr why) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str(PEER_REFUSED, why));
}

[[noreturn]] void fail(SSL* ssl, kj::StringPtr what) {
  kj::throwFatalException(kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                                        kj::str(what, ": ", errorText(ssl))));
}

// Small pieces of a message (Cap'n Proto's segment table, small segments) are gathered into one
// TLS record instead of a record each.
constexpr size_t GATHER = 16 * 1024;
// With read-ahead, what one read of the socket may bring in: many records per system call.
constexpr size_t READ_BUFFER = 256 * 1024;
// Records go out through a buffer of this size: a 1 MiB message leaves in four system calls
// instead of 64 (one per 16 KiB record), flushed at the end of every write.
constexpr size_t WRITE_BUFFER = 256 * 1024;

// What the two ends of a connection agree on in the handshake (ALPN): "cairn-plain" only when
// both are on a trusted network, else "cairn-sealed" when both know sealed records, else TLS's
// own records ("cairn-encrypted", or nothing with a release older than both). Offered in order
// of preference (wire format: length, name).
constexpr kj::StringPtr PLAIN = "cairn-plain"_kj;
constexpr kj::StringPtr SEALED = "cairn-sealed"_kj;
constexpr kj::StringPtr ENCRYPTED = "cairn-encrypted"_kj;
constexpr unsigned char OFFER_TRUSTED[] =
    "\x0b"
    "cairn-plain"
    "\x0c"
    "cairn-sealed"
    "\x0f"
    "cairn-encrypted";
constexpr unsigned char OFFER_ENCRYPTED[] =
    "\x0c"
    "cairn-sealed"
    "\x0f"
    "cairn-encrypted";
// What a release before sealed records offers.
constexpr unsigned char OFFER_TRUSTED_UNSEALED[] =
    "\x0b"
    "cairn-plain"
    "\x0f"
    "cairn-encrypted";
constexpr unsigned char OFFER_ENCRYPTED_UNSEALED[] =
    "\x0f"
    "cairn-encrypted";
// The one record a server sends after the handshake before both ends leave TLS, for each wire.
constexpr kj::byte LEAVING_FOR_PLAIN = 'P';
constexpr kj::byte LEAVING_FOR_SEALED = 'S';
// After leaving, OpenSSL's write buffer is not used again.
constexpr size_t SPENT_WRITE_BUFFER = 1024;

bool offered(const unsigned char* list, unsigned size, kj::StringPtr name) {
  for (unsigned at = 0; at < size;) {
    unsigned len = list[at++];
    if (at + len > size) return false;
    if (len == name.size() && memcmp(list + at, name.begin(), len) == 0) return true;
    at += len;
  }
  return false;
}

// The server's choice among what the client offered: plain text only if both ends are on a
// trusted network; no ALPN at all (encrypted) for a client that offers neither (older releases).
int selectWire(SSL*, const unsigned char** out, unsigned char* outLength, const unsigned char* in,
               unsigned inLength, void* wires) {
  auto& mine = *static_cast<SslContext::Wires*>(wires);
  for (kj::StringPtr wire : {PLAIN, SEALED, ENCRYPTED}) {
    if (wire == PLAIN && !mine.trustedNetwork) continue;
    if (wire == SEALED && !mine.sealed) continue;
    if (!offered(in, inLength, wire)) continue;
    *out = reinterpret_cast<const unsigned char*>(wire.begin());
    *outLength = static_cast<unsigned char>(wire.size());
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

namespace {
// One PEM object read with OpenSSL's reader, or a failure saying what it was meant to be.
template <typename T, typename Read>
T* readPem(kj::StringPtr text, Read read, kj::StringPtr what) {
  BIO* bio = BIO_new_mem_buf(text.begin(), int(text.size()));
  KJ_ASSERT(bio != nullptr);
  T* object = read(bio);
  BIO_free(bio);
  if (object == nullptr) fail(nullptr, what);
  return object;
}
}  // namespace

SslContext::SslContext(kj::StringPtr caPem, kj::StringPtr certPem, kj::StringPtr keyPem,
                       bool trustedNetwork, kj::Maybe<kj::StringPtr> crlPem)
    : caPem_(kj::str(caPem)) {
  wires_.trustedNetwork = trustedNetwork;
  // OpenSSL writes to the socket itself, without MSG_NOSIGNAL: a peer gone must be an error on
  // that connection, not a SIGPIPE that ends the process. (Servers and mounts ignore it anyway.)
  struct sigaction current;
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    signal(SIGPIPE, SIG_IGN);
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (ctx == nullptr) fail(nullptr, "SSL_CTX_new");
  ctx_ = ctx;
  KJ_ON_SCOPE_FAILURE(SSL_CTX_free(ctx));
  setRevocationList(crlPem);  // the CA's certificate store, with the list if there is one
  X509* cert = readPem<X509>(
      certPem, [](BIO* b) { return PEM_read_bio_X509(b, nullptr, nullptr, nullptr); },
      "the certificate");
  KJ_DEFER(X509_free(cert));
  if (SSL_CTX_use_certificate(ctx, cert) != 1) fail(nullptr, "the certificate");
  EVP_PKEY* key = readPem<EVP_PKEY>(
      keyPem, [](BIO* b) { return PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr); },
      "the key");
  KJ_DEFER(EVP_PKEY_free(key));
  if (SSL_CTX_use_PrivateKey(ctx, key) != 1) fail(nullptr, "the key");
  if (SSL_CTX_check_private_key(ctx) != 1) fail(nullptr, "the key and certificate");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Whole records per read; writes that may return early and be retried from elsewhere.
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, READ_BUFFER);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // No session tickets: connections are long-lived, and a ticket after the handshake would have
  // the first read of a TLS 1.3 client write, and the first write read.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  // AES-128-GCM first: every byte of file data is sealed and opened once on each side, and
  // with AES-NI it runs ~16% faster than OpenSSL's default first choice, AES-256-GCM (5.3
  // against 4.6 GB/s here, `openssl speed`), at a strength still far beyond any attack.
  if (SSL_CTX_set_ciphersuites(ctx,
                               "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                               "TLS_CHACHA20_POLY1305_SHA256") != 1) {
    fail(nullptr, "SSL_CTX_set_ciphersuites");
  }
  offerWires();
  SSL_CTX_set_alpn_select_cb(ctx, selectWire, &wires_);
}

void SslContext::offerWires() {
  // Every context both connects (servers reach each other) and accepts.
  auto offer = [this](const unsigned char* list, size_t size) {
    if (SSL_CTX_set_alpn_protos(ctxOf(ctx_), list, unsigned(size - 1)) != 0) {
      fail(nullptr, "SSL_CTX_set_alpn_protos");
    }
  };
  if (wires_.trustedNetwork) {
    wires_.sealed ? offer(OFFER_TRUSTED, sizeof(OFFER_TRUSTED))
                  : offer(OFFER_TRUSTED_UNSEALED, sizeof(OFFER_TRUSTED_UNSEALED));
  } else {
    wires_.sealed ? offer(OFFER_ENCRYPTED, sizeof(OFFER_ENCRYPTED))
                  : offer(OFFER_ENCRYPTED_UNSEALED, sizeof(OFFER_ENCRYPTED_UNSEALED));
  }
}

void SslContext::withoutSealedRecords() {
  wires_.sealed = false;
  offerWires();
}

SslContext::~SslContext() noexcept(false) {
  X509_CRL_free(static_cast<X509_CRL*>(crl_));
  SSL_CTX_free(ctxOf(ctx_));
}

void SslContext::setRevocationList(kj::Maybe<kj::StringPtr> crlPem) {
  // A store of its own, built whole and then swapped in: a handshake never sees half a change,
  // and a list that does not load leaves the one in use as it was.
  X509_STORE* store = X509_STORE_new();
  KJ_ASSERT(store != nullptr);
  KJ_ON_SCOPE_FAILURE(X509_STORE_free(store));
  X509* ca = readPem<X509>(
      caPem_, [](BIO* b) { return PEM_read_bio_X509(b, nullptr, nullptr, nullptr); },
      "the CA certificate");
  KJ_DEFER(X509_free(ca));
  if (X509_STORE_add_cert(store, ca) != 1) fail(nullptr, "the CA certificate");
  X509_CRL* list = nullptr;
  KJ_IF_MAYBE (pem, crlPem) {
    list = readPem<X509_CRL>(
        *pem, [](BIO* b) { return PEM_read_bio_X509_CRL(b, nullptr, nullptr, nullptr); },
        "the revocation list (crl.pem)");
    KJ_ON_SCOPE_FAILURE(X509_CRL_free(list));
    // Said now, not as every peer being refused later: a list of another CA (OpenSSL would
    // refuse every handshake for it).
    KJ_REQUIRE(X509_CRL_verify(list, X509_get0_pubkey(ca)) == 1,
               "the revocation list (crl.pem) is not signed by this cluster's CA");
    // Checked for the peer's certificate (the only one under the CA); OpenSSL also checks the
    // list's dates at every handshake.
    if (X509_STORE_add_crl(store, list) != 1 ||
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK) != 1) {
      fail(nullptr, "the revocation list (crl.pem)");
    }
  }
  SSL_CTX_set_cert_store(ctxOf(ctx_), store);  // frees the one before
  X509_CRL_free(static_cast<X509_CRL*>(crl_));
  crl_ = list;
}

bool SslContext::revokedSerial(kj::StringPtr hex) const {
  if (crl_ == nullptr) return false;
  BIGNUM* number = nullptr;
  if (BN_hex2bn(&number, hex.cStr()) == 0) return false;
  KJ_DEFER(BN_free(number));
  ASN1_INTEGER* serial = BN_to_ASN1_INTEGER(number, nullptr);
  KJ_ASSERT(serial != nullptr);
  KJ_DEFER(ASN1_INTEGER_free(serial));
  X509_REVOKED* entry = nullptr;
  return X509_CRL_get0_by_serial(static_cast<X509_CRL*>(crl_), &entry, serial) == 1;
}

size_t SslContext::revokedCount() const {
  if (crl_ == nullptr) return 0;
  auto* entries = X509_CRL_get_REVOKED(static_cast<X509_CRL*>(crl_));
  return entries == nullptr ? 0 : size_t(sk_X509_REVOKED_num(entries));
}

namespace {
// The socket's descriptor, ours from here (the stream that had it goes).
int takeFd(kj::Own<kj::AsyncIoStream> socket) {
  int fd = dup(KJ_REQUIRE_NONNULL(socket->getFd(), "TLS needs a socket"));
  KJ_REQUIRE(fd >= 0, "dup", strerror(errno));
  socket = nullptr;
  int flags = fcntl(fd, F_GETFL);
  KJ_REQUIRE(flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0, strerror(errno));
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}
}  // namespace

kj::Own<SslContext::Stream> SslContext::newStream(kj::UnixEventPort& port,
                                                  kj::Own<kj::AsyncIoStream> socket) {
  int fd = takeFd(kj::mv(socket));
  SSL* ssl = SSL_new(ctxOf(ctx_));
  if (ssl == nullptr) {
    close(fd);
    fail(nullptr, "SSL_new");
  }
  auto stream = kj::heap<Stream>(port, fd, ssl);  // owns both from here
  stream->trustedNetwork_ = wires_.trustedNetwork;
  // Record by record during the handshake, so that nothing past it is taken in as TLS when the
  // connection leaves TLS after it; read-ahead comes on if it stays.
  SSL_set_read_ahead(ssl, 0);
  // Reads straight from the socket (read-ahead does the batching); writes through a buffer.
  BIO* in = BIO_new_socket(fd, BIO_NOCLOSE);
  BIO* out = BIO_new_socket(fd, BIO_NOCLOSE);
  BIO* buffer = BIO_new(BIO_f_buffer());
  if (in == nullptr || out == nullptr || buffer == nullptr ||
      BIO_set_write_buffer_size(buffer, WRITE_BUFFER) != 1) {
    BIO_free(in);
    BIO_free(out);
    BIO_free(buffer);
    fail(ssl, "setting the connection up");
  }
  SSL_set_bio(ssl, in, BIO_push(buffer, out));  // the SSL object owns the chain from here
  return stream;
}

kj::Promise<kj::Own<SslContext::Stream>> SslContext::Stream::shakeHands(kj::Own<Stream> stream) {
  auto& s = *stream;
  return s.handshake().then([stream = kj::mv(stream)]() mutable { return kj::mv(stream); });
}

kj::Promise<kj::Own<SslContext::Stream>> SslContext::connect(kj::UnixEventPort& port,
                                                             kj::Own<kj::AsyncIoStream> socket,
                                                             kj::StringPtr hostName) {
  auto stream = newStream(port, kj::mv(socket));
  SSL* ssl = sslOf(stream->ssl_);
  if (SSL_set_tlsext_host_name(ssl, hostName.cStr()) != 1 ||
      X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), hostName.cStr(), hostName.size()) != 1) {
    fail(ssl, "setting the connection up");
  }
  SSL_set_connect_state(ssl);
  return Stream::shakeHands(kj::mv(stream));
}

kj::Promise<kj::Own<SslContext::Stream>> SslContext::accept(kj::UnixEventPort& port,
                                                            kj::Own<kj::AsyncIoStream> socket) {
  auto stream = newStream(port, kj::mv(socket));
  SSL_set_accept_state(sslOf(stream->ssl_));
  auto& s = *stream;
  // A TLS 1.3 client has finished its side of the handshake, and sent its first request behind
  // it, before we judge its certificate. Closed on with those bytes unread, the connection is
  // reset, and the client may lose our alert with it: it would take the refusal for an outage
  // and wait for ever (a mount with a revoked certificate did). So a refused handshake lingers:
  // the alert leaves, we read until the client closes (the handshake limit bounds it), and only
  // then close. (`s` lives as long as the continuation below, which owns the stream.)
  return s.handshake()
      .catch_([&s](kj::Exception&& e) -> kj::Promise<void> {
        return s.linger()
            .catch_([](kj::Exception&&) {})  // (the refusal is what counts)
            .then([e = kj::mv(e)]() mutable -> kj::Promise<void> { return kj::mv(e); });
      })
      .then([stream = kj::mv(stream)]() mutable { return kj::mv(stream); });
}

kj::Promise<void> SslContext::Stream::linger() {
  (void)BIO_flush(SSL_get_wbio(sslOf(ssl_)));
  shutdown(fd_, SHUT_WR);
  return drain();
}

kj::Promise<void> SslContext::Stream::drain() {
  char sink[4096];
  for (;;) {
    ssize_t n = ::read(fd_, sink, sizeof(sink));
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return readable().then([this]() { return drain(); });
    }
    return kj::READY_NOW;  // closed (or broken): nothing more will come
  }
}

SslContext::Stream::Stream(kj::UnixEventPort& port, int fd, void* ssl)
    : fd_(fd),
      ssl_(ssl),
      observer_(kj::heap<kj::UnixEventPort::FdObserver>(
          port, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ_WRITE)) {}

SslContext::Stream::~Stream() noexcept(false) {
  readable_ = nullptr;
  writable_ = nullptr;
  observer_ = nullptr;  // out of the event port before the descriptor closes
  SSL_free(sslOf(ssl_));
  close(fd_);
}

kj::String SslContext::Stream::peerCommonName() {
  X509* cert = SSL_get1_peer_certificate(sslOf(ssl_));
  KJ_REQUIRE(cert != nullptr, "the peer presented no certificate");
  KJ_DEFER(X509_free(cert));
  char cn[256] = {};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  KJ_REQUIRE(n > 0, "the peer's certificate has no common name");
  return kj::heapString(cn, size_t(n));
}

kj::String SslContext::Stream::peerSerial() {
  X509* cert = SSL_get0_peer_certificate(sslOf(ssl_));
  KJ_REQUIRE(cert != nullptr, "the peer presented no certificate");
  BIGNUM* number = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  KJ_ASSERT(number != nullptr);
  KJ_DEFER(BN_free(number));
  char* hex = BN_bn2hex(number);
  KJ_ASSERT(hex != nullptr);
  KJ_DEFER(OPENSSL_free(hex));
  return kj::str(hex);
}

kj::Promise<void> SslContext::Stream::readable() {
  if (readable_ == nullptr) {
    readable_ = observer_->whenBecomesReadable().then([this]() { readable_ = nullptr; }).fork();
  }
  return KJ_ASSERT_NONNULL(readable_).addBranch();
}

kj::Promise<void> SslContext::Stream::writable() {
  if (writable_ == nullptr) {
    writable_ = observer_->whenBecomesWritable().then([this]() { writable_ = nullptr; }).fork();
  }
  return KJ_ASSERT_NONNULL(writable_).addBranch();
}

SslContext::Stream::Wait SslContext::Stream::attempt(int result) {
  if (result > 0) return Wait::NONE;
  SSL* ssl = sslOf(ssl_);
  switch (SSL_get_error(ssl, result)) {
    case SSL_ERROR_WANT_READ:
      return Wait::READABLE;
    case SSL_ERROR_WANT_WRITE:
      return Wait::WRITABLE;
    case SSL_ERROR_ZERO_RETURN:
      eof_ = true;
      return Wait::NONE;
    case SSL_ERROR_SYSCALL: {
      int error = errno;
      if (error == 0) {  // the peer closed without a close_notify
        eof_ = true;
        return Wait::NONE;
      }
      if (error == ECONNRESET || error == EPIPE) {
        // Closed on us with our bytes unread, as a server refusing our certificate does: its
        // alert may still be there to read, and makes this a refusal, not an outage.
        KJ_IF_MAYBE (why, refusedBecause_) {
          kj::throwFatalException(refused(*why));
        }
      }
      kj::throwFatalException(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                            kj::str("TLS connection: ", strerror(error))));
    }
    default: {
      // An alert from the peer (OpenSSL's reasons for those start at SSL_AD_REASON_OFFSET): it
      // refused us, and a write after this (which finds the connection shut) says so too.
      unsigned long first = ERR_peek_error();
      bool alert =
          ERR_GET_LIB(first) == ERR_LIB_SSL && ERR_GET_REASON(first) >= SSL_AD_REASON_OFFSET;
      if (!alert) fail(ssl, "TLS");
      auto& why = refusedBecause_.emplace(errorText(ssl));
      kj::throwFatalException(refused(why));
    }
  }
}

kj::Promise<void> SslContext::Stream::wait(Wait what) {
  return what == Wait::READABLE ? readable() : writable();
}

kj::Promise<void> SslContext::Stream::handshake() {
  return kj::evalNow([this]() -> kj::Promise<void> {
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(sslOf(ssl_));
    if (r == 1) return leaveTls();
    auto what = attempt(r);
    KJ_REQUIRE(what != Wait::NONE, "the peer closed the connection during the TLS handshake");
    return wait(what).then([this]() { return handshake(); });
  });
}

kj::Promise<void> SslContext::Stream::leaveTls() {
  SSL* ssl = sslOf(ssl_);
  const unsigned char* wire = nullptr;
  unsigned length = 0;
  SSL_get0_alpn_selected(ssl, &wire, &length);
  auto chosen = kj::arrayPtr(wire, length);
  // (This end's own setting checked too: the server chose among what this client offered.)
  Wire next = trustedNetwork_ && chosen == PLAIN.asBytes() ? Wire::PLAIN
              : chosen == SEALED.asBytes()                 ? Wire::SEALED
                                                           : Wire::TLS;
  if (next == Wire::TLS) {
    SSL_set_read_ahead(ssl, 1);
    return kj::READY_NOW;
  }
  kj::byte leaving = next == Wire::PLAIN ? LEAVING_FOR_PLAIN : LEAVING_FOR_SEALED;
  auto done = [this, ssl, next]() {
    BIO* out = SSL_get_wbio(ssl);
    KJ_ASSERT(SSL_has_pending(ssl) == 0 && BIO_wpending(out) == 0,
              "TLS bytes left over where the connection leaves TLS");
    // OpenSSL's buffers are not used again (its read buffer alone is READ_BUFFER).
    BIO_set_write_buffer_size(out, SPENT_WRITE_BUFFER);
    SSL_free_buffers(ssl);
    if (next == Wire::SEALED) {
      // Keys from the TLS session's exporter, which only the two ends can compute.
      records_ = kj::heap<SealedRecords>(
          SSL_is_server(ssl) == 1, [ssl](uint64_t generation, kj::ArrayPtr<kj::byte> out) {
            kj::byte context[8];
            for (int i = 0; i < 8; ++i) context[i] = kj::byte(generation >> (8 * (7 - i)));
            auto label = SealedRecords::EXPORTER_LABEL;
            if (SSL_export_keying_material(ssl, out.begin(), out.size(), label.begin(),
                                           label.size(), context, sizeof(context), 1) != 1) {
              fail(ssl, "deriving the sealed records' keys");
            }
          });
      in_ = kj::heapArray<kj::byte>(READ_BUFFER);
      out_ = kj::heapArray<kj::byte>(WRITE_BUFFER);
    }
    wire_ = next;
  };
  if (SSL_is_server(ssl)) {
    return writeAll(kj::arrayPtr(&leaving, 1), nullptr).then(kj::mv(done));
  }
  auto byte = kj::heap<kj::byte>(0);
  auto& into = *byte;
  return readSome(&into, 1, 1, 0)
      .then([done = kj::mv(done), byte = kj::mv(byte), leaving](size_t n) mutable {
        KJ_REQUIRE(n == 1 && *byte == leaving, "the server did not leave TLS as agreed");
        done();
      });
}

kj::Promise<size_t> SslContext::Stream::tryRead(void* buffer, size_t minBytes, size_t maxBytes) {
  auto out = static_cast<kj::byte*>(buffer);
  switch (wire_) {
    case Wire::PLAIN:
      return readPlain(out, minBytes, maxBytes, 0);
    case Wire::SEALED:
      // A record being opened into the reader's buffer can only go on in the same read: one
      // cancelled half-way leaves the connection unusable (as kj's own streams do).
      KJ_IF_MAYBE (r, opening_) {
        KJ_REQUIRE(!r->direct, "a read was cancelled in the middle of a sealed record");
      }
      return readSealed(out, minBytes, maxBytes, 0);
    case Wire::TLS:
      break;
  }
  return readSome(out, minBytes, maxBytes, 0);
}

kj::Promise<size_t> SslContext::Stream::readPlain(kj::byte* out, size_t minBytes, size_t maxBytes,
                                                  size_t done) {
  return kj::evalNow([&]() -> kj::Promise<size_t> {
    while (!eof_ && done < maxBytes) {
      size_t got = 0;
      Fill fill = readSocket(out + done, maxBytes - done, got);
      if (fill == Fill::WAIT) {
        return readable().then([this, out, minBytes, maxBytes, done]() {
          return readPlain(out, minBytes, maxBytes, done);
        });
      }
      done += got;
      if (done >= minBytes) return done;
    }
    return done;
  });
}

kj::Promise<size_t> SslContext::Stream::readSome(kj::byte* out, size_t minBytes, size_t maxBytes,
                                                 size_t done) {
  // As long as OpenSSL has records (read-ahead brings in many at once), no trip through the
  // event loop: only when it must wait for the socket.
  return kj::evalNow([&]() -> kj::Promise<size_t> {
    SSL* ssl = sslOf(ssl_);
    while (!eof_ && done < maxBytes) {
      ERR_clear_error();
      errno = 0;
      int r = SSL_read(ssl, out + done, int(kj::min(maxBytes - done, size_t(INT_MAX))));
      auto what = attempt(r);
      if (r > 0) {
        BusyPoll::arrived();
        done += size_t(r);
        if (done >= minBytes) return done;
      } else if (what != Wait::NONE) {
        return wait(what).then([this, out, minBytes, maxBytes, done]() {
          return readSome(out, minBytes, maxBytes, done);
        });
      }
    }
    return done;
  });
}

kj::Promise<void> SslContext::Stream::write(const void* buffer, size_t size) {
  auto data = kj::arrayPtr(static_cast<const kj::byte*>(buffer), size);
  switch (wire_) {
    case Wire::PLAIN:
      return writePlain(data, nullptr);
    case Wire::SEALED:
      KJ_REQUIRE(!sealing_, "a write was cancelled in the middle of a sealed record");
      return writeSealed(data, nullptr);
    case Wire::TLS:
      break;
  }
  return writeAll(data, nullptr);
}

kj::Promise<void> SslContext::Stream::write(
    kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  if (pieces.size() == 0) return kj::READY_NOW;
  if (wire_ == Wire::PLAIN) return writePlain(pieces[0], pieces.slice(1, pieces.size()));
  if (wire_ == Wire::SEALED) {
    KJ_REQUIRE(!sealing_, "a write was cancelled in the middle of a sealed record");
    return writeSealed(pieces[0], pieces.slice(1, pieces.size()));
  }
  size_t small = 0;
  for (auto& p : pieces) small += p.size() < GATHER ? p.size() : 0;
  if (small == 0 || pieces.size() == 1) {
    return writeAll(pieces[0], pieces.slice(1, pieces.size()));
  }
  // Runs of small pieces gathered into one buffer each; large ones written as they are.
  auto gathered = kj::heapArray<kj::byte>(small);
  // As many parts as pieces at most (a run makes one of several): a Vector, which an
  // ArrayBuilder finished short of its capacity is not.
  kj::Vector<kj::ArrayPtr<const kj::byte>> parts(pieces.size());
  size_t at = 0, runStart = 0;
  bool inRun = false;
  for (auto& p : pieces) {
    if (p.size() < GATHER) {
      if (!inRun) runStart = at;
      inRun = true;
      memcpy(gathered.begin() + at, p.begin(), p.size());
      at += p.size();
    } else {
      if (inRun) parts.add(gathered.slice(runStart, at));
      inRun = false;
      parts.add(p);
    }
  }
  if (inRun) parts.add(gathered.slice(runStart, at));
  auto list = parts.releaseAsArray();
  auto first = list[0];
  auto rest = list.slice(1, list.size());
  return writeAll(first, rest).attach(kj::mv(gathered), kj::mv(list));
}

kj::Promise<void> SslContext::Stream::writeAll(
    kj::ArrayPtr<const kj::byte> first, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest) {
  // Record after record without the event loop, until the socket is full.
  return kj::evalNow([&]() -> kj::Promise<void> {
    SSL* ssl = sslOf(ssl_);
    for (;;) {
      while (first.size() == 0) {
        if (rest.size() == 0) return flushOut();
        first = rest[0];
        rest = rest.slice(1, rest.size());
      }
      ERR_clear_error();
      errno = 0;
      int r = SSL_write(ssl, first.begin(), int(kj::min(first.size(), size_t(INT_MAX))));
      auto what = attempt(r);
      if (r > 0) {
        first = first.slice(size_t(r), first.size());
      } else if (what != Wait::NONE) {
        return wait(what).then([this, first, rest]() { return writeAll(first, rest); });
      } else {
        // Refused, not an outage: a mount fails saying why instead of waiting for ever.
        KJ_IF_MAYBE (why, refusedBecause_) {
          return refused(*why);
        }
        return KJ_EXCEPTION(DISCONNECTED, "TLS connection ended during a write");
      }
    }
  });
}

kj::Promise<void> SslContext::Stream::writePlain(
    kj::ArrayPtr<const kj::byte> first, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest) {
  // Everything in one gathered system call while the socket takes it; the event loop only when
  // it is full.
  return kj::evalNow([&]() -> kj::Promise<void> {
    for (;;) {
      while (first.size() == 0) {
        if (rest.size() == 0) return kj::READY_NOW;
        first = rest[0];
        rest = rest.slice(1, rest.size());
      }
      constexpr size_t MAX_PIECES = 64;
      struct iovec iov[MAX_PIECES];
      size_t count = 0;
      iov[count++] = {const_cast<kj::byte*>(first.begin()), first.size()};
      for (size_t i = 0; i < rest.size() && count < MAX_PIECES; ++i) {
        iov[count++] = {const_cast<kj::byte*>(rest[i].begin()), rest[i].size()};
      }
      struct msghdr msg = {};
      msg.msg_iov = iov;
      msg.msg_iovlen = count;
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return writable().then([this, first, rest]() { return writePlain(first, rest); });
        }
        return KJ_EXCEPTION(DISCONNECTED, "connection: writing", strerror(errno));
      }
      // Past what was sent: whole pieces, then part of the next.
      for (size_t sent = size_t(n); sent > 0;) {
        if (first.size() == 0) {
          first = rest[0];
          rest = rest.slice(1, rest.size());
        }
        size_t step = kj::min(sent, first.size());
        first = first.slice(step, first.size());
        sent -= step;
      }
    }
  });
}

kj::Promise<size_t> SslContext::Stream::readSealed(kj::byte* out, size_t minBytes, size_t maxBytes,
                                                   size_t done) {
  // A record that fits whole in what the reader still wants is opened straight into its buffer:
  // what was read ahead from in_, the rest read from the socket into the buffer and opened in
  // place. Any other (a reader asking for less, as Cap'n Proto does for a message's first word)
  // is read whole into in_, opened there, and handed out from there.
  return kj::evalNow([&]() -> kj::Promise<size_t> {
    auto& records = *KJ_ASSERT_NONNULL(records_);
    constexpr size_t HEADER = SealedRecords::HEADER, TAG = SealedRecords::TAG;
    for (;;) {
      if (pending_.size() > 0) {
        size_t n = kj::min(pending_.size(), maxBytes - done);
        if (n > 0) memcpy(out + done, pending_.begin(), n);  // (a read of nothing may pass null)
        pending_ = pending_.slice(n, pending_.size());
        done += n;
        if (done >= minBytes) return done;
        continue;
      }
      size_t buffered = inEnd_ - inStart_;
      size_t need = HEADER;  // in in_ before going on
      KJ_IF_MAYBE (r, opening_) {
        if (r->direct) {
          kj::byte* into = out + done;
          if (r->done < r->length && buffered > 0) {
            size_t n = kj::min(buffered, r->length - r->done);
            records.open(in_.begin() + inStart_, into + r->done, n);
            inStart_ += n;
            r->done += n;
            continue;
          }
          if (r->done < r->length) {
            kj::byte* at = into + r->done;
            size_t got = 0;
            Fill fill = readSocket(at, r->length - r->done, got);
            KJ_REQUIRE(fill != Fill::END, "the connection ended inside a sealed record");
            if (fill == Fill::WAIT) break;
            records.open(at, at, got);
            r->done += got;
            continue;
          }
          if (buffered >= TAG) {
            records.endOpen(in_.begin() + inStart_);
            inStart_ += TAG;
            done += r->length;
            opening_ = nullptr;
            if (done >= minBytes) return done;
            continue;
          }
          need = TAG;
        } else {
          need = r->length + TAG;
          if (buffered >= need) {
            kj::byte* at = in_.begin() + inStart_;
            records.open(at, at, r->length);
            records.endOpen(at + r->length);
            pending_ = kj::arrayPtr(at, r->length);
            inStart_ += need;
            opening_ = nullptr;
            continue;
          }
        }
      } else if (buffered >= HEADER) {
        size_t length = records.beginOpen(in_.begin() + inStart_);
        inStart_ += HEADER;
        opening_ = Opening{length, 0, length <= maxBytes - done};
        continue;
      } else if (eof_) {
        KJ_REQUIRE(buffered == 0, "the connection ended inside a sealed record's header");
        return done;
      }
      Fill fill = fillIn(need);
      if (fill == Fill::WAIT) break;
      // (At a record's boundary the stream ends there.)
      KJ_REQUIRE(fill == Fill::MORE || opening_ == nullptr,
                 "the connection ended inside a sealed record");
    }
    return readable().then([this, out, minBytes, maxBytes, done]() {
      return readSealed(out, minBytes, maxBytes, done);
    });
  });
}

SslContext::Stream::Fill SslContext::Stream::fillIn(size_t need) {
  if (inStart_ == inEnd_) {
    inStart_ = inEnd_ = 0;
    // A record larger than the usual buffer came (and is handed out by now): back to that size.
    if (in_.size() > READ_BUFFER) in_ = kj::heapArray<kj::byte>(READ_BUFFER);
  }
  size_t buffered = inEnd_ - inStart_;
  if (in_.size() - inStart_ < kj::max(need, READ_BUFFER / 4)) {
    // Room at the end by moving what is there to the front, or a larger buffer for a record
    // that does not fit (bounded by SealedRecords::MAX_RECORD).
    if (in_.size() < need) {
      auto larger = kj::heapArray<kj::byte>(need);
      memcpy(larger.begin(), in_.begin() + inStart_, buffered);
      in_ = kj::mv(larger);
    } else {
      memmove(in_.begin(), in_.begin() + inStart_, buffered);
    }
    inStart_ = 0;
    inEnd_ = buffered;
  }
  size_t got = 0;
  Fill fill = readSocket(in_.begin() + inEnd_, in_.size() - inEnd_, got);
  inEnd_ += got;
  return fill;
}

SslContext::Stream::Fill SslContext::Stream::readSocket(kj::byte* into, size_t size, size_t& got) {
  for (;;) {
    ssize_t n = ::read(fd_, into, size);
    if (n > 0) {
      BusyPoll::arrived();
      got = size_t(n);
      return Fill::MORE;
    }
    if (n == 0) {
      eof_ = true;
      return Fill::END;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Fill::WAIT;
    kj::throwFatalException(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                          kj::str("connection: ", strerror(errno))));
  }
}

kj::Promise<void> SslContext::Stream::writeSealed(
    kj::ArrayPtr<const kj::byte> first, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest) {
  // Records are sealed into out_ and sent from there when it fills, and at the end. A run of
  // small pieces (a message's segment table and small segments) goes in one record; a large
  // piece in records of its own, so that the reader, which reads the segments whole, opens it
  // straight into its buffer.
  return kj::evalNow([&]() -> kj::Promise<void> {
    auto& records = *KJ_ASSERT_NONNULL(records_);
    constexpr size_t HEADER = SealedRecords::HEADER, TAG = SealedRecords::TAG;
    auto again = [this](kj::ArrayPtr<const kj::byte> first,
                        kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> rest) {
      return writable().then([this, first, rest]() { return writeSealed(first, rest); });
    };
    for (;;) {
      while (first.size() == 0 && rest.size() > 0) {
        first = rest[0];
        rest = rest.slice(1, rest.size());
      }
      if (!sealing_) {
        if (first.size() == 0) {
          if (sendOut()) return kj::READY_NOW;
          return again(first, rest);
        }
        if (out_.size() - outEnd_ < HEADER && !sendOut()) return again(first, rest);
        size_t length = kj::min(first.size(), SealedRecords::MAX_RECORD);
        if (first.size() < GATHER) {
          for (auto& p : rest) {
            if (p.size() >= GATHER || length + p.size() > SealedRecords::MAX_RECORD) break;
            length += p.size();
          }
        }
        records.beginSeal(length, out_.begin() + outEnd_);
        outEnd_ += HEADER;
        sealingLeft_ = length;
        sealing_ = true;
      }
      while (sealingLeft_ > 0) {
        if (outEnd_ == out_.size() && !sendOut()) return again(first, rest);
        while (first.size() == 0) {
          first = rest[0];
          rest = rest.slice(1, rest.size());
        }
        size_t n = kj::min(kj::min(first.size(), sealingLeft_), out_.size() - outEnd_);
        records.seal(first.begin(), out_.begin() + outEnd_, n);
        outEnd_ += n;
        first = first.slice(n, first.size());
        sealingLeft_ -= n;
      }
      if (out_.size() - outEnd_ < TAG && !sendOut()) return again(first, rest);
      records.endSeal(out_.begin() + outEnd_);
      outEnd_ += TAG;
      sealing_ = false;
    }
  });
}

bool SslContext::Stream::sendOut() {
  while (outStart_ < outEnd_) {
    ssize_t n = ::send(fd_, out_.begin() + outStart_, outEnd_ - outStart_, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      kj::throwFatalException(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                            kj::str("connection: writing: ", strerror(errno))));
    }
    outStart_ += size_t(n);
  }
  outStart_ = outEnd_ = 0;
  return true;
}

kj::Promise<void> SslContext::Stream::flushOut() {
  BIO* out = SSL_get_wbio(sslOf(ssl_));
  for (;;) {
    errno = 0;
    if (BIO_flush(out) == 1) return kj::READY_NOW;
    if (!BIO_should_retry(out)) {
      return KJ_EXCEPTION(DISCONNECTED, "TLS connection: writing", strerror(errno));
    }
    if (!BIO_should_write(out)) continue;  // interrupted: again
    return writable().then([this]() { return flushOut(); });
  }
}

kj::Promise<void> SslContext::Stream::whenWriteDisconnected() {
  return kj::NEVER_DONE;
}

void SslContext::Stream::shutdownWrite() {
  // close_notify if it goes out at once; the socket's write side closes either way.
  if (wire_ == Wire::TLS) {
    SSL_shutdown(sslOf(ssl_));
    BIO_flush(SSL_get_wbio(sslOf(ssl_)));
  }
  ::shutdown(fd_, SHUT_WR);
}

void SslContext::Stream::getsockopt(int level, int option, void* value, kj::uint* length) {
  socklen_t len = *length;
  KJ_SYSCALL(::getsockopt(fd_, level, option, value, &len));
  *length = len;
}

void SslContext::Stream::setsockopt(int level, int option, const void* value, kj::uint length) {
  KJ_SYSCALL(::setsockopt(fd_, level, option, value, length));
}

void SslContext::Stream::getsockname(struct sockaddr* addr, kj::uint* length) {
  socklen_t len = *length;
  KJ_SYSCALL(::getsockname(fd_, addr, &len));
  *length = len;
}

void SslContext::Stream::getpeername(struct sockaddr* addr, kj::uint* length) {
  socklen_t len = *length;
  KJ_SYSCALL(::getpeername(fd_, addr, &len));
  *length = len;
}

}  // namespace cairn
