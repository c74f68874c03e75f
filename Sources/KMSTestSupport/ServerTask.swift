/// A server a test runs in process, in a task, on a port the system picked: `start` returns once the server reports
/// the port it bound; `stop` cancels the task and waits for it.
public final class ServerTask: Sendable {
    public let port: Int
    private let task: Task<Void, any Error>

    private init(port: Int, task: Task<Void, any Error>) {
        self.port = port
        self.task = task
    }

    /// `run` serves until cancelled and calls `bound` with the port once it listens.
    public static func start(_ run: @escaping @Sendable (_ bound: @escaping @Sendable (Int) -> Void) async throws -> Void) async throws -> ServerTask {
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let task = Task {
            defer { continuation.finish() }
            try await run { continuation.yield($0) }
        }
        var iterator = stream.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            task.cancel()
            throw ServerDidNotStart(error: await task.result.failure)
        }
        return ServerTask(port: port, task: task)
    }

    public func stop() async {
        task.cancel()
        _ = await task.result
    }
}

/// The server ended (or reported no port) before it listened.
public struct ServerDidNotStart: Error, CustomStringConvertible {
    public let error: (any Error)?
    public var description: String { "the test server did not start" + (error.map { ": \($0)" } ?? "") }
}

extension Result {
    fileprivate var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
