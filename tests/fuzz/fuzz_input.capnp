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
      bootstrap @5 :BootstrapCall;
      convert :group {      # LockSession.convertMany of one lock
        lockId @6 :UInt64;
        mode @7 :Rpc.LockMode;
      }
    }
  }

  # A call on a server's Bootstrap, over a connection of its own, from a peer of the role given
  # (what its certificate would say). Not here: shutdown, restart, failover and replayBarrier,
  # which end or freeze the in-process server by design.
  struct BootstrapCall {
    toData @0 :Bool;        # the data server (else the metadata server)
    as @1 :Role;
    enum Role {
      client @0;
      server @1;
      admin @2;
    }
    union {
      status @2 :Void;
      ping @3 :Void;
      mayMount @4 :Void;
      evict @5 :Data;       # a client uuid
      registerTarget :group {
        fsUuid @6 :Data;
        target @7 :Rpc.TargetAddress;
      }
      connect @8 :Rpc.Hello;
    }
  }
}
