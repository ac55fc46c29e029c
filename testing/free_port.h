// Loopback ports for tests and benchmarks that start servers (no gtest, so
// benchmark programs can use it too).
#ifndef LPD_TESTING_FREE_PORT_H_
#define LPD_TESTING_FREE_PORT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace lpd::test {

// A TCP port free on 127.0.0.1 just now (the kernel's choice for port 0);
// -1 when no socket could be bound.
inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  const bool bound =
      ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  return bound ? ntohs(address.sin_port) : -1;
}

}  // namespace lpd::test

#endif  // LPD_TESTING_FREE_PORT_H_
