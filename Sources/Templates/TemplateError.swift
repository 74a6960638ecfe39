/// Why a template could not be parsed or rendered.
public enum TemplateError: Error, CustomStringConvertible, Equatable {
    /// The source is not valid template syntax: what was expected, where (1-based), and the token found.
    case syntax(message: String, line: Int, column: Int, token: String)
    /// The template called `raise_exception(message)`.
    case raised(String)
    /// Rendering failed: what failed, and the template line it happened on.
    case runtime(message: String, line: Int)

    public var description: String {
        switch self {
        case let .syntax(message, line, column, token):
            return "template syntax error at line \(line), column \(column) near '\(token)': \(message)"
        case let .raised(message):
            return "template raised an exception: \(message)"
        case let .runtime(message, line):
            return "template error at line \(line): \(message)"
        }
    }
}
