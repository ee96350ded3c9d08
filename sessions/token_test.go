package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

type vectorFile struct {
	Valid []struct {
		Secret      string `json:"secret"`
		SID         string `json:"sid"`
		AID         string `json:"aid"`
		Exp         uint64 `json:"exp"`
		Token       string `json:"token"`
		TokenDigest string `json:"token_digest"`
	} `json:"valid"`
	Invalid []struct {
		Name  string `json:"name"`
		Token string `json:"token"`
		Error string `json:"error"`
	} `json:"invalid"`
}

// loadVectors reads the vectors committed in testdata and, when the shared
// originals sit beside the checkout (as in CI), checks the copy is current.
func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	raw, err := os.ReadFile("testdata/tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	if shared, err := os.ReadFile("../../shared/vectors/tokens.json"); err == nil && !bytes.Equal(raw, shared) {
		t.Fatal("testdata/tokens.json differs from ../shared/vectors/tokens.json: copy the shared vectors in")
	}
	var v vectorFile
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Valid) == 0 || len(v.Invalid) == 0 {
		t.Fatal("no vectors loaded")
	}
	return v
}

var errorClasses = map[string]error{
	"invalid_token_format": ErrInvalidTokenFormat,
	"invalid_signature":    ErrInvalidSignature,
	"access_denied":        ErrAccessDenied,
	"session_expired":      ErrSessionExpired,
}

func TestVectorsValidEncode(t *testing.T) {
	for _, v := range loadVectors(t).Valid {
		got := encodeToken([]byte(v.Secret), payload{SID: v.SID, AID: v.AID, Exp: v.Exp})
		if got != v.Token {
			t.Errorf("sid %q: token\n got %s\nwant %s", v.SID, got, v.Token)
		}
		if d := tokenDigest(v.Token); d != v.TokenDigest {
			t.Errorf("sid %q: digest %s, want %s", v.SID, d, v.TokenDigest)
		}
		p, err := parseToken([]byte(v.Secret), v.Token)
		if err != nil || p != (payload{SID: v.SID, AID: v.AID, Exp: v.Exp}) {
			t.Errorf("sid %q: parse = %+v, %v", v.SID, p, err)
		}
	}
}

// Every valid vector that fits the store's expiry range comes out of a
// real Manager byte for byte, and authenticates.
func TestVectorsValidIssue(t *testing.T) {
	for _, v := range loadVectors(t).Valid {
		if v.Exp > maxExpiry {
			continue // encoded above; no clock and TTL can produce it
		}
		m, err := New(NewMemoryStore(), Config{
			Secret: []byte(v.Secret),
			TTL:    time.Duration(v.Exp) * time.Second,
			Limit:  1,
			Clock:  func() time.Time { return time.Unix(0, 0) },
			NewID:  func() (string, error) { return v.SID, nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		iss, err := m.Issue(context.Background(), v.AID)
		if err != nil {
			t.Fatalf("sid %q: issue: %v", v.SID, err)
		}
		if iss.Token != v.Token || iss.Session.TokenDigest != v.TokenDigest {
			t.Errorf("sid %q: issued %s / %s, want %s / %s", v.SID, iss.Token, iss.Session.TokenDigest, v.Token, v.TokenDigest)
		}
		if _, err := m.Authenticate(context.Background(), iss.Token, v.AID); err != nil {
			t.Errorf("sid %q: authenticate: %v", v.SID, err)
		}
	}
}

func TestVectorsInvalid(t *testing.T) {
	m, err := New(NewMemoryStore(), Config{Secret: []byte("session-secret"), TTL: time.Minute, Limit: 1,
		Clock: func() time.Time { return time.Unix(0, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range loadVectors(t).Invalid {
		want, ok := errorClasses[v.Error]
		if !ok {
			t.Fatalf("%s: unknown error class %q", v.Name, v.Error)
		}
		_, err := m.Authenticate(context.Background(), v.Token, "did:agentmesh:test")
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", v.Name, err, want)
		}
	}
}

// signed returns body + "." + a valid signature, so a payload check is
// reached.
func signed(secret, body string) string { return body + "." + sign([]byte(secret), body) }

func TestParseTokenRejects(t *testing.T) {
	const secret = "session-secret"
	good := encodeToken([]byte(secret), payload{SID: "s", AID: "a", Exp: 60})
	body := func(json string) string { return signed(secret, b64.EncodeToString([]byte(json))) }
	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"over max length", good + strings.Repeat("A", MaxTokenLength), ErrInvalidTokenFormat},
		{"exactly max length of garbage", strings.Repeat("A", MaxTokenLength), ErrInvalidTokenFormat},
		{"newline in signature", good[:len(good)-4] + "\n" + good[len(good)-4:], ErrInvalidSignature},
		{"newline in payload", signed(secret, "eyJz\naWQiOiJzIiwiYWlkIjoiYSIsImV4cCI6NjB9"), ErrInvalidTokenFormat},
		{"padded payload", signed(secret, b64.EncodeToString([]byte(`{"sid":"s","aid":"a","exp":6}`))+"="), ErrInvalidTokenFormat},
		{"std base64 chars in payload", signed(secret, "ab+/"), ErrInvalidTokenFormat},
		{"non-canonical trailing bits", signed(secret, "eh"), ErrInvalidTokenFormat},
		{"empty signature", strings.SplitN(good, ".", 2)[0] + ".", ErrInvalidSignature},
		{"empty payload", signed(secret, ""), ErrInvalidTokenFormat},
		{"exp float", body(`{"sid":"s","aid":"a","exp":60.0}`), ErrInvalidTokenFormat},
		{"exp exponent", body(`{"sid":"s","aid":"a","exp":6e1}`), ErrInvalidTokenFormat},
		{"exp overflow", body(`{"sid":"s","aid":"a","exp":18446744073709551616}`), ErrInvalidTokenFormat},
		{"exp string", body(`{"sid":"s","aid":"a","exp":"60"}`), ErrInvalidTokenFormat},
		{"sid number", body(`{"sid":1,"aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"missing sid", body(`{"aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"duplicate sid", body(`{"sid":"s","sid":"t","aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"upper-case key", body(`{"SID":"s","aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"trailing garbage", body(`{"sid":"s","aid":"a","exp":60}x`), ErrInvalidTokenFormat},
		{"two objects", body(`{"sid":"s","aid":"a","exp":60}{}`), ErrInvalidTokenFormat},
		{"array form (serde takes it; deliberately refused)", body(`["s","a",60]`), ErrInvalidTokenFormat},
		{"lone high surrogate", body(`{"sid":"\ud800","aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"lone low surrogate", body(`{"sid":"\udc00x","aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"high surrogate then non-low", body(`{"sid":"\ud800\u0041","aid":"a","exp":60}`), ErrInvalidTokenFormat},
		{"lone surrogate in a key", body(`{"sid":"s","aid":"a","exp":60,"x\uDBFF":1}`), ErrInvalidTokenFormat},
		{"lone surrogate in aid", body(`{"sid":"s","aid":"\ud800","exp":60}`), ErrInvalidTokenFormat},
		{"invalid utf-8", body("{\"sid\":\"\xff\",\"aid\":\"a\",\"exp\":60}"), ErrInvalidTokenFormat},
		{"null", body(`null`), ErrInvalidTokenFormat},
	}
	for _, c := range cases {
		if _, err := parseToken([]byte(secret), c.token); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestParseTokenAccepts(t *testing.T) {
	const secret = "k"
	body := func(json string) string { return signed(secret, b64.EncodeToString([]byte(json))) }
	cases := map[string]string{
		"unknown field ignored":      `{"sid":"s","aid":"a","exp":60,"x":{"y":[1,2]}}`,
		"other key order":            `{"exp":60,"aid":"a","sid":"s"}`,
		"whitespace":                 " { \"sid\" : \"s\" , \"aid\":\"a\",\"exp\":60 } \n",
		"escaped chars in value":     `{"sid":"\u0073","aid":"a","exp":60}`,
		"escaped backslash before u": `{"sid":"s","aid":"a","exp":60,"x":"\\ud800"}`,
		"escaped quote":              `{"sid":"s","aid":"a","exp":60,"x":"\"\\"}`,
		// serde_json skips ignored values without validating their
		// escapes, so the reference accepts these; so do we.
		"lone surrogate in ignored value":      `{"sid":"s","aid":"a","exp":60,"x":"\uDBFF"}`,
		"lone surrogate in ignored nested key": `{"x":{"\udc00":["\ud800",1]},"sid":"s","aid":"a","exp":60}`,
	}
	for name, js := range cases {
		p, err := parseToken([]byte(secret), body(js))
		if err != nil || p != (payload{SID: "s", AID: "a", Exp: 60}) {
			t.Errorf("%s: got %+v, %v", name, p, err)
		}
	}
}

// serde_json escapes only '"', '\\' and control characters, with \b \f \n
// \r \t short forms and lower-case \u00xx otherwise; no HTML or U+2028
// escaping.
func TestPayloadJSONMatchesSerde(t *testing.T) {
	got := string(payload{SID: "a\"b\\c\b\f\n\r\t\x01\x1f\x7f", AID: "<&>\u2028é", Exp: 18446744073709551615}.appendJSON(nil))
	want := `{"sid":"a\"b\\c\b\f\n\r\t\u0001\u001f` + "\x7f" + `","aid":"<&>` + "\u2028é" + `","exp":18446744073709551615}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var back struct{ Sid, Aid string }
	if err := json.Unmarshal([]byte(got), &back); err != nil || back.Sid != "a\"b\\c\b\f\n\r\t\x01\x1f\x7f" {
		t.Fatalf("not valid JSON or wrong round trip: %v %q", err, back.Sid)
	}
}

func TestParsePayloadSurrogatePair(t *testing.T) {
	p, ok := parsePayload([]byte(`{"sid":"\ud83d\ude00","aid":"\u00e9","exp":1}`))
	if !ok || p.SID != "😀" || p.AID != "é" {
		t.Fatalf("got %+v %v", p, ok)
	}
}

// Tokens the library issues take the canonical fast path when they need no
// escapes, and the general parser agrees on every vector.
func TestCanonicalPayloadFastPath(t *testing.T) {
	p := payload{SID: "0123abcd", AID: "did:agentmesh:planner", Exp: 1_700_000_000}
	got, ok := parseCanonicalPayload(p.appendJSON(nil))
	if !ok || got != p {
		t.Fatalf("fast path on %q: %+v %v", p.appendJSON(nil), got, ok)
	}
	for _, raw := range []string{
		`{"sid":"a","aid":"b","exp":1} `, `{"aid":"b","sid":"a","exp":1}`, `{"sid":"a\"","aid":"b","exp":1}`,
		`{"sid":"a","aid":"b","exp":-1}`, `{"sid":"a","aid":"b","exp":1e3}`, `{"sid":"a","aid":"b","exp":18446744073709551616}`,
		"{\"sid\":\"a\x01\",\"aid\":\"b\",\"exp\":1}", `{"sid":"a","aid":"b","exp":1,"x":2}`,
	} {
		if got, ok := parseCanonicalPayload([]byte(raw)); ok {
			t.Errorf("fast path accepted %q as %+v", raw, got)
		}
	}
}
