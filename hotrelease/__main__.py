from hotrelease.cli import main

main()
