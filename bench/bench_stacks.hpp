// SIGUSR1 prints the stack of the thread that receives it (to stderr, as module+offset frames that
// addr2line resolves against the same build): a hang on the lent GPU machine, which has no debugger, can
// then be read by sending it to each thread (tgkill).
#pragma once

#include <execinfo.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>

namespace engram::bench {

inline void PrintStackOnSignal(int) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  char head[64];
  const int len =
      std::snprintf(head, sizeof(head), "--- stack of thread %ld\n", static_cast<long>(syscall(SYS_gettid)));
  if (len > 0) (void)!write(STDERR_FILENO, head, static_cast<std::size_t>(len));
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
}

inline void InstallStackDumper() {
  void* warm[1];
  (void)backtrace(warm, 1);  // loads the unwinder now, not inside the handler
  struct sigaction sa {};
  sa.sa_handler = PrintStackOnSignal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
}

}  // namespace engram::bench
