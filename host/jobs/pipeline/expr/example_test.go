package expr_test

import (
	"fmt"

	"github.com/flotilla-ci/flotilla/host/jobs/pipeline/expr"
)

func Example() {
	e, err := expr.Parse(`$CI_COMMIT_BRANCH==$CI_DEFAULT_BRANCH || ${CI_COMMIT_TAG} =~ /^v\d+/`)
	if err != nil {
		fmt.Println(err)
		return
	}
	env := map[string]string{"CI_COMMIT_TAG": "v1.2.0", "CI_DEFAULT_BRANCH": "main"}
	ok, _ := e.Eval(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
	fmt.Println(e)
	fmt.Println(e.Variables())
	fmt.Println(ok)

	_, err = expr.Parse(`$CI_COMMIT_BRANCH == "main`)
	fmt.Println(err)
	// Output:
	// $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_COMMIT_TAG =~ /^v\d+/
	// [CI_COMMIT_BRANCH CI_DEFAULT_BRANCH CI_COMMIT_TAG]
	// true
	// column 22: unterminated string (close it with ")
}
