// MiniXML: just enough XML for the documents libvirt returns (elements, attributes, text,
// entities, comments, CDATA), and escaping for the documents this module writes. No DTDs and no
// namespace resolution; a heavy XML dependency would buy nothing here.

/// A parsed XML element.
struct MiniXML: Sendable, Hashable {
    /// The qualified name as written (`graphics`, `talus:owner`).
    var name: String
    var attributes: [String: String] = [:]
    var children: [MiniXML] = []
    /// The character data directly inside this element (not its children's), entities decoded.
    var text: String = ""

    subscript(attribute: String) -> String? { attributes[attribute] }

    /// The first child element with this name.
    func child(_ name: String) -> MiniXML? { children.first { $0.name == name } }

    /// The child elements with this name.
    func children(_ name: String) -> [MiniXML] { children.filter { $0.name == name } }

    /// The part of the name after the prefix (`owner` for `talus:owner`).
    var localName: Substring { name.split(separator: ":", maxSplits: 1).last ?? Substring(name) }

    /// The namespace URI declared on this element for its own prefix (`xmlns:talus` for
    /// `talus:owner`, `xmlns` without a prefix). Declarations on ancestors are not consulted;
    /// libvirt writes metadata elements with the declaration on the element itself.
    var declaredNamespace: String? {
        let parts = name.split(separator: ":", maxSplits: 1)
        return parts.count == 2 ? attributes["xmlns:\(parts[0])"] : attributes["xmlns"]
    }

    /// Parses a document with one root element.
    static func parse(_ xml: String) throws(LibvirtError) -> MiniXML {
        var parser = Parser(bytes: Array(xml.utf8))
        return try parser.document()
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0
        static let maximumDepth = 256

        init(bytes: [UInt8]) { self.bytes = bytes }

        func fail(_ message: String) -> LibvirtError {
            LibvirtError(code: .xmlError, message: "malformed XML at byte \(index): \(message)", operation: "parse XML")
        }

        func at(_ literal: String) -> Bool {
            let utf8 = literal.utf8
            guard index + utf8.count <= bytes.count else { return false }
            return zip(bytes[index...], utf8).allSatisfy { $0 == $1 }
        }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }

        mutating func skipSpace() {
            while let b = current, Parser.isSpace(b) { index += 1 }
        }

        /// Moves past the next `terminator`; returns the bytes before it.
        mutating func skip(past terminator: String) throws(LibvirtError) -> ArraySlice<UInt8> {
            let start = index
            while index < bytes.count {
                if at(terminator) {
                    let content = bytes[start..<index]
                    index += terminator.utf8.count
                    return content
                }
                index += 1
            }
            throw fail("missing \(terminator)")
        }

        /// Skips whitespace, comments, processing instructions and a DOCTYPE (without internal subset).
        mutating func skipMisc() throws(LibvirtError) {
            while true {
                skipSpace()
                if at("<?") {
                    _ = try skip(past: "?>")
                } else if at("<!--") {
                    _ = try skip(past: "-->")
                } else if at("<!DOCTYPE") {
                    _ = try skip(past: ">")
                } else {
                    return
                }
            }
        }

        mutating func document() throws(LibvirtError) -> MiniXML {
            try skipMisc()
            guard current == UInt8(ascii: "<") else { throw fail("expected the root element") }
            let root = try element(depth: 0)
            try skipMisc()
            guard index == bytes.count else { throw fail("content after the root element") }
            return root
        }

        mutating func name() throws(LibvirtError) -> String {
            let start = index
            while let b = current, !Parser.isSpace(b), b != UInt8(ascii: "/"), b != UInt8(ascii: ">"),
                b != UInt8(ascii: "="), b != UInt8(ascii: "<"), b != UInt8(ascii: "'"), b != UInt8(ascii: "\"")
            {
                index += 1
            }
            guard index > start else { throw fail("expected a name") }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }

        mutating func expect(_ byte: Character) throws(LibvirtError) {
            guard current == byte.asciiValue else { throw fail("expected '\(byte)'") }
            index += 1
        }

        mutating func element(depth: Int) throws(LibvirtError) -> MiniXML {
            guard depth < Parser.maximumDepth else { throw fail("elements nested too deeply") }
            try expect("<")
            var element = MiniXML(name: try name())
            // Attributes, then `/>` or `>`.
            while true {
                skipSpace()
                if at("/>") {
                    index += 2
                    return element
                }
                if current == UInt8(ascii: ">") {
                    index += 1
                    break
                }
                let attribute = try name()
                skipSpace()
                try expect("=")
                skipSpace()
                guard let quote = current, quote == UInt8(ascii: "'") || quote == UInt8(ascii: "\"") else {
                    throw fail("expected a quoted value for \(attribute)")
                }
                index += 1
                let start = index
                while let b = current, b != quote {
                    if b == UInt8(ascii: "<") { throw fail("'<' in the value of \(attribute)") }
                    index += 1
                }
                guard current == quote else { throw fail("unterminated value of \(attribute)") }
                let value = try decode(bytes[start..<index])
                index += 1
                guard element.attributes.updateValue(value, forKey: attribute) == nil else {
                    throw fail("duplicate attribute \(attribute)")
                }
            }
            // Content up to the matching end tag.
            while true {
                if index >= bytes.count { throw fail("element <\(element.name)> is not closed") }
                if at("</") {
                    index += 2
                    let end = try name()
                    skipSpace()
                    try expect(">")
                    guard end == element.name else { throw fail("</\(end)> closes <\(element.name)>") }
                    return element
                } else if at("<!--") {
                    _ = try skip(past: "-->")
                } else if at("<![CDATA[") {
                    index += 9
                    element.text += String(decoding: try skip(past: "]]>"), as: UTF8.self)
                } else if at("<?") {
                    _ = try skip(past: "?>")
                } else if current == UInt8(ascii: "<") {
                    element.children.append(try self.element(depth: depth + 1))
                } else {
                    let start = index
                    while let b = current, b != UInt8(ascii: "<") { index += 1 }
                    element.text += try decode(bytes[start..<index])
                }
            }
        }

        /// Character data with entity and character references decoded.
        func decode(_ raw: ArraySlice<UInt8>) throws(LibvirtError) -> String {
            guard raw.contains(UInt8(ascii: "&")) else { return String(decoding: raw, as: UTF8.self) }
            var out = [UInt8]()
            out.reserveCapacity(raw.count)
            var i = raw.startIndex
            while i < raw.endIndex {
                let b = raw[i]
                guard b == UInt8(ascii: "&") else {
                    out.append(b)
                    i += 1
                    continue
                }
                guard let semicolon = raw[i...].firstIndex(of: UInt8(ascii: ";")), semicolon - i <= 12 else {
                    throw fail("unterminated entity reference")
                }
                let entity = String(decoding: raw[(i + 1)..<semicolon], as: UTF8.self)
                let scalar: Unicode.Scalar?
                switch entity {
                case "lt": scalar = "<"
                case "gt": scalar = ">"
                case "amp": scalar = "&"
                case "quot": scalar = "\""
                case "apos": scalar = "'"
                default:
                    if entity.hasPrefix("#x") || entity.hasPrefix("#X") {
                        scalar = UInt32(entity.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                    } else if entity.hasPrefix("#") {
                        scalar = UInt32(entity.dropFirst(1)).flatMap(Unicode.Scalar.init)
                    } else {
                        scalar = nil
                    }
                }
                guard let scalar else { throw fail("unknown entity &\(entity);") }
                out.append(contentsOf: String(Character(scalar)).utf8)
                i = semicolon + 1
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

extension String {
    /// The string escaped for XML text and for attribute values in either quote style.
    var xmlEscaped: String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for scalar in unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            case "\n": out += "&#10;"
            case "\r": out += "&#13;"
            case "\t": out += "&#9;"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Whether every character may appear in an XML 1.0 document (no control characters other
    /// than tab, newline and carriage return; no U+FFFE/U+FFFF).
    var isXMLSafe: Bool {
        unicodeScalars.allSatisfy { s in
            switch s.value {
            case 0x09, 0x0A, 0x0D: true
            case 0..<0x20, 0xFFFE, 0xFFFF: false
            default: true
            }
        }
    }
}
