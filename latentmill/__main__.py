from latentmill.cli import main

main()
