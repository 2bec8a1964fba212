module hotrelease.example/gameapi

go 1.19
