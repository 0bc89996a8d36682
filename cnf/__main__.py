from cnf.cli import main

main()
