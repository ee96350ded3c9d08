package server_test

import (
	"bufio"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/internal/server"
)

// api/openapi.yaml documents exactly the served routes, with the admin
// key on exactly the admin routes. The file is read line by line (the
// module has no YAML dependency), relying on its two-space layout:
// paths at indent 2, methods at 4, an operation's security at 6.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	f, err := os.Open("../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		pathRE     = regexp.MustCompile(`^  (/\S*):$`)
		methodRE   = regexp.MustCompile(`^    (get|put|post|delete|patch|head|options):$`)
		inPaths    bool
		path, op   string
		documented = map[string]bool{}
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "paths:":
			inPaths = true
		case inPaths && line != "" && !strings.HasPrefix(line, " "):
			inPaths = false
		case !inPaths:
		case pathRE.MatchString(line):
			path, op = pathRE.FindStringSubmatch(line)[1], ""
		case methodRE.MatchString(line):
			op = strings.ToUpper(methodRE.FindStringSubmatch(line)[1]) + " " + path
			documented[op] = false
		case op != "" && strings.TrimSpace(line) == "security: [{adminKey: []}]" && strings.HasPrefix(line, "      s"):
			documented[op] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	served := server.Routes()
	if !maps.Equal(documented, served) {
		t.Fatalf("api/openapi.yaml (route: admin):\n%v\nserved:\n%v", sorted(documented), sorted(served))
	}
}

func sorted(m map[string]bool) []string {
	var out []string
	for k, v := range m {
		if v {
			k += " (admin)"
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
