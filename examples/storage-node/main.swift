// A tiny storage node that uses kmsd the way a database would: each data file gets a DEK from kmsd; records are
// sealed locally with AES-256-GCM under that DEK; the file keeps only the *wrapped* DEK. After a restart, the node
// asks kmsd to unwrap the DEK and reads its records back. The plaintext DEK never touches the disk.
//
//   storage-node-example --server https://localhost:8443 --ca ca.pem --cert node.pem --key node-key.pem \
//       --key-name demo --file data.kmsfile write "a record"
//   storage-node-example … --file data.kmsfile read
import ArgumentParser
import Crypto
import Foundation
import KMSAPI
import KMSClient

@main
struct StorageNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "storage-node-example",
                                                    abstract: "Encrypt records with DEKs from kmsd, read them back.")

    @Option var server: String
    @Option var ca: String
    @Option var cert: String
    @Option var key: String
    @Option(help: "The kmsd key the node is allowed to use.") var keyName: String
    @Option(help: "The data file.") var file: String
    @Argument(help: "write TEXT… | read") var command: [String]

    /// The file: line 1 is a JSON header with the wrapped DEK and the context it is bound to; each further line is
    /// one record, base64 of nonce ‖ ciphertext ‖ tag.
    struct Header: Codable {
        var key: String
        var wrapped: String
        var context: [String: String]
    }

    func run() async throws {
        let client = try KMSClient(.init(server: server, caFile: ca, certificateFile: cert, keyFile: key,
                                         cache: .init(maxEntries: 16, ttl: .seconds(60), maxUses: 1000)))
        do {
            try await perform(client)
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw error
        }
    }

    func perform(_ client: KMSClient) async throws {
        let url = URL(fileURLWithPath: file)
        switch command.first {
        case "write":
            let text = command.dropFirst().joined(separator: " ")
            let (header, dek) = try await openOrCreate(url, client)
            let sealed = try AES.GCM.seal(Data(text.utf8), using: dek, authenticating: Data(header.key.utf8))
            guard let combined = sealed.combined else { throw ValidationError("sealing failed") }
            let handle = try FileHandle(forWritingTo: url)
            try handle.seekToEnd()
            try handle.write(contentsOf: Data((combined.base64EncodedString() + "\n").utf8))
            try handle.close()
            print("wrote 1 record to \(file)")
        case "read":
            let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n")
            guard let first = lines.first else { throw ValidationError("\(file) is empty") }
            let header = try JSONDecoder().decode(Header.self, from: Data(first.utf8))
            let dek = try await unwrap(header, client)
            for line in lines.dropFirst() {
                guard let combined = Data(base64Encoded: String(line)) else { throw ValidationError("a record is not base64") }
                let opened = try AES.GCM.open(try AES.GCM.SealedBox(combined: combined), using: dek, authenticating: Data(header.key.utf8))
                print(String(decoding: opened, as: UTF8.self))
            }
        default:
            throw ValidationError("the command is write TEXT… or read")
        }
    }

    private func openOrCreate(_ url: URL, _ client: KMSClient) async throws -> (Header, SymmetricKey) {
        if let data = FileManager.default.contents(atPath: url.path), let first = data.split(separator: UInt8(ascii: "\n")).first {
            let header = try JSONDecoder().decode(Header.self, from: Data(first))
            return (header, try await unwrap(header, client))
        }
        let context = ["file": url.lastPathComponent]
        let datakey = try await client.datakey(keyName, context: context)
        guard let plaintext = Data(base64Encoded: datakey.plaintext) else { throw ValidationError("kmsd sent a bad DEK") }
        let header = Header(key: keyName, wrapped: datakey.wrapped, context: context)
        var bytes = try JSONEncoder().encode(header)
        bytes.append(UInt8(ascii: "\n"))
        _ = FileManager.default.createFile(atPath: url.path, contents: bytes, attributes: [.posixPermissions: 0o600])
        return (header, SymmetricKey(data: plaintext))
    }

    private func unwrap(_ header: Header, _ client: KMSClient) async throws -> SymmetricKey {
        let unwrapped = try await client.unwrap(header.key, wrapped: header.wrapped, context: header.context)
        guard let plaintext = Data(base64Encoded: unwrapped.plaintext) else { throw ValidationError("kmsd sent a bad DEK") }
        return SymmetricKey(data: plaintext)
    }
}
