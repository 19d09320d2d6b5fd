@0xc4e1f3a9b27d5e01;
# What the server fuzzer feeds a server: a sequence of requests, each sent on one session of a
# real in-process metadata or data server, as a client would (tests/fuzz/server_fuzz.cc).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cairn::fuzz");

using Rpc = import "/rpc/cairn.capnp";

struct FuzzInput {
  steps @0 :List(Step);

  struct Step {
    union {
      meta @0 :Rpc.MetaRequest;
      data @1 :Rpc.DataRequest;
      lock @2 :Rpc.LockRequest;
      cancel @3 :UInt64;
      reconnect @4 :Void;   # the session goes, and comes back (as after a lost connection)
    }
  }
}
