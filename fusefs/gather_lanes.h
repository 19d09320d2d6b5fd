// When the requests nobody waits for leave: the lanes of UpdateBatch (updates answered ahead,
// to the metadata server) and DataBatch (small write-behind writes, to a data target). Each lane
// (a directory's updates, a target's writes) gathers for `gather` from its first queued item, or
// until a batch is full, and then leaves as soon as fewer than `maxInFlight` of its batches are on
// their way, until it is empty; what comes after that gathers again. hurry() makes every lane
// leave at the end of this turn (someone waits for what is queued). An item whose sender dropped
// its promise (cancelled: an eviction cancels what was answered ahead) is dropped, never sent.
//
// The derived class says what a batch holds (`full`, `take`) and sends it (`send`).
#pragma once

#include <kj/async.h>
#include <kj/debug.h>
#include <kj/timer.h>
#include <kj/vector.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <unordered_map>

namespace cairn {

// `Item` has `bool cancelled()`.
template <typename Item>
class GatherLanes : private kj::TaskSet::ErrorHandler {
public:
  GatherLanes(kj::Timer& timer, size_t maxInFlight, kj::Duration gather, kj::StringPtr name)
      : timer_(timer), maxInFlight_(maxInFlight), gather_(gather), name_(name), tasks_(*this) {}
  virtual ~GatherLanes() noexcept(false) {}
  KJ_DISALLOW_COPY(GatherLanes);

  // Someone waits for what is queued: every lane leaves without gathering (at the end of this
  // turn, or as its batches on their way are answered) until it is empty.
  void hurry() {
    kj::Vector<uint64_t> keys;
    for (auto& [key, lane] : lanes_) {
      if (lane.queue.empty()) continue;
      lane.due = true;
      keys.add(key);
    }
    for (uint64_t key : keys) schedule(key);
  }

  // A reconnect's recovery: everything queued leaves at once, whatever is already on its way
  // (it was all answered before the connection went, and goes inside the recovery; the link's
  // gate lets it through in the order it was made). Lanes gather again afterwards.
  void sendAll() {
    kj::Vector<uint64_t> keys;
    for (auto& [key, lane] : lanes_) keys.add(key);
    for (uint64_t key : keys) {
      KJ_IF_MAYBE (lane, find(key)) {
        while (!lane->queue.empty()) flush(key, *lane, false);
      }
      schedule(key);
    }
  }

protected:
  using Queue = std::deque<Item>;

  // Queues an item in lane `key`; it leaves when the lane does.
  void add(uint64_t key, Item item) {
    lanes_[key].queue.push_back(kj::mv(item));
    schedule(key);
  }

private:
  // The queue holds at least a batch: it need not gather longer.
  virtual bool full(const Queue& queue) const = 0;
  // How many of the queue's first items go in the next batch (at least one).
  virtual size_t take(const Queue& queue) const = 0;
  // Sends a batch; resolves once it is answered (its items know how it ended).
  virtual kj::Promise<void> sendBatch(uint64_t key, kj::Array<Item> batch) = 0;

  struct Lane {
    Queue queue;
    size_t inFlight = 0;
    bool scheduled = false;  // leaves at the end of this turn
    bool gathering = false;  // the gathering time runs
    // Gathered long enough, or hurried: leaves as soon as the in-flight limit lets it, until
    // the queue is empty (what comes after that gathers again).
    bool due = false;
  };

  kj::Maybe<Lane&> find(uint64_t key) {
    auto it = lanes_.find(key);
    if (it == lanes_.end()) return nullptr;
    return it->second;
  }

  void schedule(uint64_t key) {
    auto it = lanes_.find(key);
    if (it == lanes_.end()) return;
    auto& lane = it->second;
    if (lane.queue.empty() && lane.inFlight == 0) {
      lanes_.erase(it);  // nothing of this lane's left
      return;
    }
    if (lane.scheduled || lane.queue.empty()) return;
    if (lane.due || full(lane.queue) || gather_ == 0 * kj::SECONDS) {
      // Otherwise it leaves when a batch on its way is answered (this is called again then).
      if (lane.inFlight >= maxInFlight_) return;
      lane.scheduled = true;
      // Last in the turn: the items queued in it leave together.
      tasks_.add(kj::evalLast([this, key]() {
        KJ_IF_MAYBE (lane, find(key)) {
          lane->scheduled = false;
          flush(key, *lane);
        }
      }));
    } else if (!lane.gathering) {
      lane.gathering = true;
      tasks_.add(timer_.afterDelay(gather_).then([this, key]() {
        KJ_IF_MAYBE (lane, find(key)) {
          lane->gathering = false;
          if (!lane->queue.empty()) lane->due = true;
          schedule(key);
        }
      }));
    }
  }

  // `limited`: only while fewer than maxInFlight_ of the lane's batches are on their way.
  void flush(uint64_t key, Lane& lane, bool limited = true) {
    auto cancelled = [](Item& item) { return item.cancelled(); };
    lane.queue.erase(std::remove_if(lane.queue.begin(), lane.queue.end(), cancelled),
                     lane.queue.end());
    if (lane.queue.empty()) {
      lane.due = false;
      if (limited) schedule(key);  // forgets the lane if nothing of it is on its way either
      return;
    }
    if (limited && lane.inFlight >= maxInFlight_) return;
    size_t n = kj::max(size_t(1), kj::min(lane.queue.size(), take(lane.queue)));
    auto batch = kj::heapArrayBuilder<Item>(n);
    for (size_t i = 0; i < n; ++i) {
      batch.add(kj::mv(lane.queue.front()));
      lane.queue.pop_front();
    }
    if (lane.queue.empty()) lane.due = false;
    ++lane.inFlight;
    auto sent = sendBatch(key, batch.finish()).catch_([this](kj::Exception&& e) {
      taskFailed(kj::mv(e));  // (the items were told)
    });
    tasks_.add(sent.then([this, key]() {
      KJ_IF_MAYBE (lane, find(key)) {
        --lane->inFlight;
      }
      schedule(key);
    }));
  }

  void taskFailed(kj::Exception&& exception) override {
    spdlog::error("{}: {}", name_.cStr(), exception.getDescription().cStr());
  }

  kj::Timer& timer_;
  size_t maxInFlight_;
  kj::Duration gather_;
  kj::StringPtr name_;
  std::unordered_map<uint64_t, Lane> lanes_;
  kj::TaskSet tasks_;
};

}  // namespace cairn
