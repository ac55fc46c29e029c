// A fixed pool of threads for the work that gRPC reactor threads must not do
// (SQLite commits with fsync, SELECT): services post a closure here and
// finish their reactor from it.
#ifndef LPD_SERVER_TASK_POOL_H_
#define LPD_SERVER_TASK_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lpd::server {

class TaskPool {
 public:
  explicit TaskPool(int threads);
  // Runs what was posted, then joins the threads.
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Queues `work`; it runs on one of the pool's threads, in posting order
  // per thread. After the destructor started, `work` runs inline.
  void Post(std::function<void()> work);

 private:
  void Loop();

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace lpd::server

#endif  // LPD_SERVER_TASK_POOL_H_
