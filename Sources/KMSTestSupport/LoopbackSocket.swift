import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket bound to a free port on 127.0.0.1, and the port; listening (connections complete in the backlog until
/// accepted) or only bound. The caller closes it.
public func loopbackSocket(listening: Bool, backlog: Int32 = 16) throws -> (socket: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw FixtureError("socket failed") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && (!listening || listen(fd, backlog) == 0) && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else {
        close(fd)
        throw FixtureError("cannot bind a loopback port")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A loopback port nothing listens on now (bound, read and released).
public func freeLoopbackPort() throws -> Int {
    let (socket, port) = try loopbackSocket(listening: false)
    close(socket)
    return port
}
