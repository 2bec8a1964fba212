// Builds the plugin against gameapi v1.1.0 (testdata/gameapi-next), while the example host
// is built with v1.0.0: an ABI mismatch the host must refuse before plugin.Open.
//   GOFLAGS=-modfile=testdata/abi-mismatch.mod hotrelease build --version 1.2.0
module hotrelease.example/arena

go 1.19

require hotrelease.example/gameapi v1.1.0

replace hotrelease.example/gameapi => ./testdata/gameapi-next
