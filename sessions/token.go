package sessions

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxTokenLength is the longest token Authenticate will look at, in bytes.
// Longer input is refused with [ErrInvalidTokenFormat] before any decoding
// or hashing. Tokens this package issues are far shorter: the payload holds
// at most a [MaxSessionIDLength]-byte ID and a [MaxAgentIDLength]-byte agent
// ID, each at most doubled by JSON escaping, plus base64 overhead.
const MaxTokenLength = 4096

// payload is the signed part of a token. Field order is the wire order.
type payload struct {
	SID string
	AID string
	Exp uint64
}

var b64 = base64.RawURLEncoding.Strict()

// encodeToken returns base64url(JSON{sid,aid,exp}) + "." + base64url(HMAC).
func encodeToken(secret []byte, p payload) string {
	body := b64.EncodeToString(p.appendJSON(nil))
	return body + "." + sign(secret, body)
}

func sign(secret []byte, body string) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(body))
	return b64.EncodeToString(mac.Sum(nil))
}

// tokenDigest is the lowercase hex SHA-256 of the whole token: what the
// store keeps instead of the token.
func tokenDigest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// appendJSON writes {"sid":...,"aid":...,"exp":...} exactly as serde_json
// does for the reference struct: keys in this order, no spaces, no HTML
// escaping, and only '"', '\\' and control characters escaped.
func (p payload) appendJSON(b []byte) []byte {
	b = append(b, `{"sid":`...)
	b = appendJSONString(b, p.SID)
	b = append(b, `,"aid":`...)
	b = appendJSONString(b, p.AID)
	b = append(b, `,"exp":`...)
	b = strconv.AppendUint(b, p.Exp, 10)
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\b':
			b = append(b, `\b`...)
		case c == '\f':
			b = append(b, `\f`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// parseToken checks a token in the reference's order: shape, signature,
// then payload. It does no I/O.
func parseToken(secret []byte, token string) (payload, error) {
	return parseTokenRotating(secret, nil, token)
}

// parseTokenRotating is parseToken accepting a signature by secret or by
// any of previous (secret rotation).
func parseTokenRotating(secret []byte, previous [][]byte, token string) (payload, error) {
	if len(token) > MaxTokenLength {
		return payload{}, ErrInvalidTokenFormat
	}
	body, sig, ok := strings.Cut(token, ".")
	if !ok {
		return payload{}, ErrInvalidTokenFormat
	}
	if !verifySignature(secret, previous, body, sig) {
		return payload{}, ErrInvalidSignature
	}
	raw, ok := decodeB64(body)
	if !ok {
		return payload{}, ErrInvalidTokenFormat
	}
	p, ok := parsePayload(raw)
	if !ok {
		return payload{}, ErrInvalidTokenFormat
	}
	return p, nil
}

// verifySignature compares in constant time against each secret in turn.
// Which secret matched may show in the timing; that tells an attacker
// nothing about any secret.
func verifySignature(secret []byte, previous [][]byte, body, sig string) bool {
	provided, ok := decodeB64(sig)
	if !ok {
		return false
	}
	if macMatches(secret, body, provided) {
		return true
	}
	for _, prev := range previous {
		if macMatches(prev, body, provided) {
			return true
		}
	}
	return false
}

func macMatches(secret []byte, body string, provided []byte) bool {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(body))
	return hmac.Equal(provided, mac.Sum(nil))
}

// decodeB64 decodes unpadded base64url strictly. Go's decoder skips '\r'
// and '\n'; the reference's does not, so any byte outside the alphabet is
// refused here first.
func decodeB64(s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, false
		}
	}
	out, err := b64.DecodeString(s)
	return out, err == nil
}

// parsePayload accepts what serde_json accepts for the reference struct:
// one JSON object with string "sid", string "aid" and an unsigned 64-bit
// integer "exp", each exactly once; keys are case-sensitive; unknown keys
// are ignored; nothing may follow the object; escapes in the keys and in
// the sid and aid values may not encode lone UTF-16 surrogates, while
// inside ignored values they may (serde_json skips those without
// validating the escapes, and so does this parser). Where it differs from
// serde it is stricter: it refuses the array form ["sid","aid",exp]
// (serde's derived structs take it; the reference never emits it) and
// invalid UTF-8 anywhere in the payload (serde tolerates it inside ignored
// fields). Only a holder of the secret can present a payload at all, so
// these cases are defence in depth.
func parsePayload(raw []byte) (payload, bool) {
	if p, ok := parseCanonicalPayload(raw); ok {
		return p, true
	}
	return parsePayloadJSON(raw)
}

// parseCanonicalPayload parses the one layout every issuer emits,
// {"sid":"…","aid":"…","exp":N} with no escapes, without encoding/json
// (which cost about a seventh of Authenticate's client CPU). Anything else
// returns false and goes to parsePayloadJSON; where both accept, they
// agree (FuzzParsePayloadFastPath).
func parseCanonicalPayload(raw []byte) (p payload, ok bool) {
	rest, ok := bytes.CutPrefix(raw, []byte(`{"sid":"`))
	if !ok {
		return p, false
	}
	if p.SID, rest, ok = cutPlainString(rest); !ok {
		return p, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"aid":"`)); !ok {
		return p, false
	}
	if p.AID, rest, ok = cutPlainString(rest); !ok {
		return p, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"exp":`)); !ok {
		return p, false
	}
	digits, ok := bytes.CutSuffix(rest, []byte("}"))
	if !ok || len(digits) == 0 || (digits[0] == '0' && len(digits) > 1) {
		return p, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return p, false
		}
	}
	exp, err := strconv.ParseUint(string(digits), 10, 64)
	p.Exp = exp
	return p, err == nil
}

// cutPlainString returns the JSON string body before the next quote if it
// needs no unescaping and is valid: no backslash, no control character,
// valid UTF-8.
func cutPlainString(b []byte) (string, []byte, bool) {
	end := bytes.IndexByte(b, '"')
	if end < 0 {
		return "", nil, false
	}
	body := b[:end]
	for _, c := range body {
		if c < 0x20 || c == '\\' {
			return "", nil, false
		}
	}
	if !utf8.Valid(body) {
		return "", nil, false
	}
	return string(body), b[end+1:], true
}

// parsePayloadJSON is the general parser behind parsePayload.
func parsePayloadJSON(raw []byte) (payload, bool) {
	var p payload
	if !utf8.Valid(raw) {
		return p, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return p, false
	}
	// Go's decoder turns a lone surrogate escape into U+FFFD; serde_json
	// refuses it in what it decodes (keys, sid, aid) and skips it in what
	// it ignores. So the raw text of exactly those tokens is checked:
	// raw[from:dec.InputOffset()] spans the separator and the token.
	loneSurrogateSince := func(from int64) bool { return hasLoneSurrogate(raw[from:dec.InputOffset()]) }
	var seenSID, seenAID, seenExp bool
	for dec.More() {
		keyFrom := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil || loneSurrogateSince(keyFrom) {
			return p, false
		}
		key, _ := tok.(string)
		valueFrom := dec.InputOffset()
		var ok bool
		switch key {
		case "sid":
			ok = !seenSID && decodeString(dec, &p.SID) && !loneSurrogateSince(valueFrom)
			seenSID = true
		case "aid":
			ok = !seenAID && decodeString(dec, &p.AID) && !loneSurrogateSince(valueFrom)
			seenAID = true
		case "exp":
			ok = !seenExp && decodeUint(dec, &p.Exp)
			seenExp = true
		default:
			var skip json.RawMessage
			ok = dec.Decode(&skip) == nil
		}
		if !ok {
			return p, false
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return p, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return p, false // trailing data
	}
	return p, seenSID && seenAID && seenExp
}

func decodeString(dec *json.Decoder, dst *string) bool {
	tok, err := dec.Token()
	s, isString := tok.(string)
	if err != nil || !isString {
		return false
	}
	*dst = s
	return true
}

func decodeUint(dec *json.Decoder, dst *uint64) bool {
	tok, err := dec.Token()
	n, isNumber := tok.(json.Number)
	if err != nil || !isNumber {
		return false
	}
	// ParseUint refuses "-1", "1.0" and "1e3", as serde does for u64.
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return false
	}
	*dst = v
	return true
}

// hasLoneSurrogate reports whether a JSON text (or a run of whole tokens
// of one, starting outside a string) has a \uXXXX escape for a UTF-16
// surrogate that is not half of a high+low pair. Go's decoder turns such
// escapes into U+FFFD; serde_json refuses them where it decodes.
func hasLoneSurrogate(raw []byte) bool {
	inString := false
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString && i+1 < len(raw):
			if raw[i+1] != 'u' {
				i++ // skip the escaped character, which may be '"' or '\\'
				continue
			}
			r, ok := hex4(raw, i+2)
			switch {
			case !ok:
				return false // malformed escape: the decoder rejects it
			case r >= 0xdc00 && r <= 0xdfff:
				return true // low half first
			case r >= 0xd800 && r <= 0xdbff:
				if i+11 >= len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
					return true
				}
				if lo, ok := hex4(raw, i+8); !ok || lo < 0xdc00 || lo > 0xdfff {
					return true
				}
				i += 11
			default:
				i += 5
			}
		}
	}
	return false
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
