import NIOCore

/// A connection's event loop as the task executor of the tasks that serve it (`withTaskExecutorPreference`), so a
/// request is read, handled and answered on the thread that owns its socket: no hand-off to the Swift concurrency
/// pool after each read and back to the event loop for each write. Nothing on the request path blocks (HSM calls run
/// on the HSM threads, the audit writer has its own thread); results from those threads resume the request here.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
