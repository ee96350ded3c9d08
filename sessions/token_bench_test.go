package sessions

import (
	"testing"
)

// The token codec on its own: what every Issue (encode, digest) and every
// Authenticate (parse, digest) spends in CPU before and after the store.
//
//	go test -run '^$' -bench Token -benchmem ./sessions

var (
	benchSecret  = []byte("0123456789abcdef0123456789abcdef")
	benchPayload = payload{SID: "2b7e151628aed2a6abf7158809cf4f3c", AID: "did:agentmesh:planner", Exp: 1_900_000_000}
)

func BenchmarkTokenEncode(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = encodeToken(benchSecret, benchPayload)
	}
}

func BenchmarkTokenParse(b *testing.B) {
	token := encodeToken(benchSecret, benchPayload)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseToken(benchSecret, token); err != nil {
			b.Fatal(err)
		}
	}
}

// A token signed by the oldest of two previous secrets costs three MACs.
func BenchmarkTokenParseRotated(b *testing.B) {
	previous := [][]byte{[]byte("previous-secret-1-previous-secret-1"), []byte("previous-secret-2-previous-secret-2")}
	token := encodeToken(previous[1], benchPayload)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseTokenRotating(benchSecret, previous, token); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTokenDigest(b *testing.B) {
	token := encodeToken(benchSecret, benchPayload)
	b.ReportAllocs()
	for b.Loop() {
		_ = tokenDigest(token)
	}
}
