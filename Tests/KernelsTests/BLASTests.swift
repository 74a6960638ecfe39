import Testing
@testable import Kernels

@Suite struct BLASTests {
    @Test func sgemmMatchesNaive() {
        let (m, n, k) = (5, 7, 3)
        let a = (0..<m*k).map { Float($0 % 5) - 2 }
        let b = (0..<k*n).map { Float($0 % 3) * 0.5 }
        var c = [Float](repeating: 0, count: m*n)
        BLAS.sgemm(m: m, n: n, k: k, a: a, b: b, c: &c)
        for i in 0..<m { for j in 0..<n {
            var s: Float = 0
            for p in 0..<k { s += a[i*k+p] * b[p*n+j] }
            #expect(c[i*n+j] == s)
        } }
    }
}
